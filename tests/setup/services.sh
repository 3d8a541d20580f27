#!/usr/bin/env bash
# Starts PostgreSQL and RabbitMQ when they are not running, and creates Mica's
# database role and RabbitMQ vhost/user. Idempotent.
#   PostgreSQL: role mica (password mica, CREATEDB so tests make their own databases),
#               database mica, on 127.0.0.1:5432.
#   RabbitMQ:   user mica (password mica), vhost mica, on 127.0.0.1:5672.
set -euo pipefail

sudo=
[ "$(id -u)" -eq 0 ] || sudo=sudo

# --- PostgreSQL -------------------------------------------------------------
cluster=$(pg_lsclusters --no-header | awk 'NR==1 {print $1" "$2" "$4}')
if [ -z "$cluster" ]; then
    echo "services: no PostgreSQL cluster found" >&2
    exit 1
fi
read -r pg_version pg_name pg_status <<<"$cluster"
if [ "$pg_status" != "online" ]; then
    echo "services: starting PostgreSQL $pg_version/$pg_name"
    $sudo pg_ctlcluster "$pg_version" "$pg_name" start
fi
as_postgres() { if [ -z "$sudo" ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }
psql_admin() { as_postgres psql -v ON_ERROR_STOP=1 -qtAX "$@"; }
for _ in $(seq 1 30); do psql_admin -c 'select 1' >/dev/null 2>&1 && break; sleep 1; done
if [ "$(psql_admin -c "select 1 from pg_roles where rolname='mica'")" != "1" ]; then
    psql_admin -c "create role mica login createdb password 'mica'"
fi
if [ "$(psql_admin -c "select 1 from pg_database where datname='mica'")" != "1" ]; then
    psql_admin -c "create database mica owner mica"
fi
echo "services: PostgreSQL ready (postgres://mica:mica@127.0.0.1:5432/mica)"

# --- RabbitMQ ---------------------------------------------------------------
rabbit_up() { $sudo timeout 30 rabbitmqctl -q status >/dev/null 2>&1; }
if ! rabbit_up; then
    echo "services: starting RabbitMQ"
    if [ -x /etc/init.d/rabbitmq-server ]; then
        $sudo /etc/init.d/rabbitmq-server start >/dev/null
    else
        $sudo rabbitmq-server -detached
    fi
    for _ in $(seq 1 60); do rabbit_up && break; sleep 1; done
    rabbit_up || { echo "services: RabbitMQ did not start" >&2; exit 1; }
fi
if ! $sudo rabbitmqctl -q list_vhosts | grep -qx mica; then
    $sudo rabbitmqctl -q add_vhost mica
fi
if ! $sudo rabbitmqctl -q list_users | awk '{print $1}' | grep -qx mica; then
    $sudo rabbitmqctl -q add_user mica mica
fi
$sudo rabbitmqctl -q set_permissions -p mica mica '.*' '.*' '.*'
echo "services: RabbitMQ ready (amqp://mica:mica@127.0.0.1:5672/mica)"

-- The password a guest posts once to the metadata service (Nova's
-- enable_instance_password; read and cleared with os-server-password).
-- The guest encrypts it with the key pair's public key before posting.
CREATE TABLE instance_passwords (
    instance_uuid TEXT PRIMARY KEY,
    password TEXT NOT NULL
);

//! Image API against both databases: streamed upload and download, hashes,
//! limits, interrupted uploads, qcow2 checks, listing, visibility, patches.

mod common;

use std::time::Duration;

use common::{Caller, Env, nova_error};
use futures_util::StreamExt;
use md5::Digest;
use mica_controller::db::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

both_databases!(
    upload_download_roundtrip,
    oversized_uploads_are_413_and_leave_nothing,
    truncated_upload_stays_queued,
    killed_upload_is_recovered_at_start,
    abandoned_upload_future_is_undone,
    qcow2_is_validated,
    listing_pages_and_filters,
    visibility_across_projects,
    patches_and_bad_input,
    versions_and_schemas,
);

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    getrandom::fill(&mut v).unwrap();
    v
}

async fn create(env: &Env, who: &Caller, body: Value) -> Value {
    let r = env
        .call(
            who,
            Method::POST,
            &format!("{}/v2/images", env.image),
            Some(body),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

async fn show(env: &Env, who: &Caller, id: &str) -> Value {
    let r = env
        .call(
            who,
            Method::GET,
            &format!("{}/v2/images/{id}", env.image),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn upload(env: &Env, who: &Caller, id: &str, data: Vec<u8>) -> reqwest::Response {
    env.http
        .put(format!("{}/v2/images/{id}/file", env.image))
        .header("x-auth-token", &who.token)
        .header("content-type", "application/octet-stream")
        .body(data)
        .send()
        .await
        .unwrap()
}

fn store_entries(env: &Env) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(&env.cloud.config.image.store_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

async fn upload_download_roundtrip(backend: Backend) {
    let env = Env::start(backend).await;
    let admin = env.admin().await;
    let img = create(
        &env,
        &admin,
        json!({"name": "disk", "disk_format": "raw", "container_format": "bare",
               "hw_disk_bus": "virtio", "tags": ["a", "b"]}),
    )
    .await;
    assert_eq!(img["status"], "queued");
    assert_eq!(img["visibility"], "shared");
    assert_eq!(img["owner"], admin.project_id);
    assert_eq!(img["hw_disk_bus"], "virtio");
    assert_eq!(img["tags"], json!(["a", "b"]));
    for k in ["checksum", "size", "os_hash_value", "virtual_size"] {
        assert!(img[k].is_null(), "{k} of a queued image");
    }
    assert_eq!(img["protected"], false);
    assert_eq!(img["min_ram"], 0);
    let id = img["id"].as_str().unwrap().to_owned();
    assert_eq!(img["self"], format!("/v2/images/{id}"));
    assert_eq!(img["file"], format!("/v2/images/{id}/file"));

    // No data yet: download is 204.
    let r = env
        .call(
            &admin,
            Method::GET,
            &format!("{}/v2/images/{id}/file", env.image),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // Upload as a stream of chunks (no Content-Length).
    let data = random_bytes(9 * 1024 * 1024 + 123);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(100_000).map(|c| Ok(c.to_vec())).collect();
    let r = env
        .http
        .put(format!("{}/v2/images/{id}/file", env.image))
        .header("x-auth-token", &admin.token)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let img = show(&env, &admin, &id).await;
    assert_eq!(img["status"], "active");
    assert_eq!(img["size"], data.len() as u64);
    assert_eq!(img["virtual_size"], data.len() as u64);
    assert_eq!(img["checksum"], hex::encode(md5::Md5::digest(&data)));
    assert_eq!(img["os_hash_algo"], "sha512");
    assert_eq!(
        img["os_hash_value"],
        hex::encode(sha2::Sha512::digest(&data))
    );

    let r = env
        .call(
            &admin,
            Method::GET,
            &format!("{}/v2/images/{id}/file", env.image),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-md5"].to_str().unwrap(),
        hex::encode(md5::Md5::digest(&data))
    );
    let got = r.bytes().await.unwrap();
    assert!(got.as_ref() == data.as_slice(), "download equals upload");

    // Data can't be replaced.
    let r = upload(&env, &admin, &id, b"again".to_vec()).await;
    nova_error(r, 409, "conflictingRequest").await;
    assert_eq!(store_entries(&env), vec![id.clone()]);

    // Delete removes row and data.
    let r = env
        .call(
            &admin,
            Method::DELETE,
            &format!("{}/v2/images/{id}", env.image),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(store_entries(&env).is_empty());
    let r = env
        .call(
            &admin,
            Method::GET,
            &format!("{}/v2/images/{id}", env.image),
            None,
        )
        .await;
    nova_error(r, 404, "itemNotFound").await;
    env.stop().await;
}

async fn oversized_uploads_are_413_and_leave_nothing(backend: Backend) {
    let env = Env::start_with(backend, |c| c.image.max_image_size_bytes = 1024 * 1024).await;
    let admin = env.admin().await;
    let img = create(
        &env,
        &admin,
        json!({"name": "big", "disk_format": "raw", "container_format": "bare"}),
    )
    .await;
    let id = img["id"].as_str().unwrap().to_owned();
    // Declared too big.
    let r = upload(&env, &admin, &id, random_bytes(2 * 1024 * 1024)).await;
    let m = nova_error(r, 413, "overLimit").await;
    assert!(m.contains("maximum image size"), "{m}");
    assert_eq!(show(&env, &admin, &id).await["status"], "queued");
    assert!(store_entries(&env).is_empty());
    // Streamed without a length, found too big while reading.
    let data = random_bytes(2 * 1024 * 1024);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let r = env
        .http
        .put(format!("{}/v2/images/{id}/file", env.image))
        .header("x-auth-token", &admin.token)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    // The server may answer before reading the whole body; either it reports
    // 413 or the connection is cut while we still send.
    if let Ok(r) = r {
        nova_error(r, 413, "overLimit").await;
    }
    let img = show(&env, &admin, &id).await;
    assert_eq!(img["status"], "queued");
    assert!(img["size"].is_null() && img["checksum"].is_null());
    assert!(store_entries(&env).is_empty());
    // Exactly at the limit is fine.
    let r = upload(&env, &admin, &id, random_bytes(1024 * 1024)).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    env.stop().await;
}

async fn truncated_upload_stays_queued(backend: Backend) {
    let env = Env::start(backend).await;
    let admin = env.admin().await;
    let img = create(
        &env,
        &admin,
        json!({"name": "cut", "disk_format": "raw", "container_format": "bare"}),
    )
    .await;
    let id = img["id"].as_str().unwrap().to_owned();
    let addr = env.image.trim_start_matches("http://").to_owned();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT /v2/images/{id}/file HTTP/1.1\r\nHost: {addr}\r\nX-Auth-Token: {}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        admin.token,
        4 * 1024 * 1024
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&random_bytes(1024 * 1024)).await.unwrap();
    sock.flush().await.unwrap();
    // The server is receiving: the image is `saving`. Then go away mid-body.
    let mut saving = false;
    for _ in 0..50 {
        if show(&env, &admin, &id).await["status"] == "saving" {
            saving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saving, "the upload started");
    drop(sock);
    let mut status = String::new();
    for _ in 0..50 {
        status = show(&env, &admin, &id).await["status"]
            .as_str()
            .unwrap()
            .to_owned();
        if status == "queued" && store_entries(&env).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "queued");
    assert!(store_entries(&env).is_empty(), "{:?}", store_entries(&env));
    let img = show(&env, &admin, &id).await;
    assert!(img["size"].is_null() && img["checksum"].is_null());
    // And a complete upload afterwards works.
    let r = upload(&env, &admin, &id, random_bytes(4096)).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(show(&env, &admin, &id).await["status"], "active");
    env.stop().await;
}

async fn killed_upload_is_recovered_at_start(backend: Backend) {
    let env = Env::start(backend).await;
    let admin = env.admin().await;
    let img = create(
        &env,
        &admin,
        json!({"name": "k", "disk_format": "raw", "container_format": "bare"}),
    )
    .await;
    let id = img["id"].as_str().unwrap().to_owned();
    // What a SIGKILL mid-upload leaves: status saving and a temporary file.
    let app = &env.cloud.app;
    assert!(
        mica_controller::db::images::set_status(app.db.pool(), &id, "queued", "saving")
            .await
            .unwrap()
    );
    let temp = app
        .images
        .dir()
        .join(format!(".upload-{id}-0123456789abcdef"));
    std::fs::write(&temp, b"partial").unwrap();
    let n = mica_controller::app::images::recover_interrupted_uploads(app)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert!(!temp.exists());
    assert_eq!(show(&env, &admin, &id).await["status"], "queued");
    env.stop().await;
}

/// The upload's future dropped mid-body (as hyper does when a connection
/// dies, or shutdown after its grace): the image is requeued, no file left.
async fn abandoned_upload_future_is_undone(backend: Backend) {
    let env = Env::start(backend).await;
    let admin = env.admin().await;
    let img = create(
        &env,
        &admin,
        json!({"name": "a", "disk_format": "raw", "container_format": "bare"}),
    )
    .await;
    let id = img["id"].as_str().unwrap().to_owned();
    let app = env.cloud.app.clone();
    let ctx = mica_controller::app::identity::validate_token(&app, &admin.token)
        .await
        .unwrap();
    let first: Result<bytes::Bytes, std::io::Error> = Ok(bytes::Bytes::from(random_bytes(1 << 20)));
    let body = futures_util::stream::iter([first]).chain(futures_util::stream::pending());
    let upload = mica_controller::app::images::upload(&app, &ctx, &id, None, Box::pin(body));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), upload)
            .await
            .is_err()
    );
    let mut status = String::new();
    for _ in 0..50 {
        status = show(&env, &admin, &id).await["status"]
            .as_str()
            .unwrap()
            .to_owned();
        if status == "queued" && store_entries(&env).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, "queued");
    assert!(store_entries(&env).is_empty(), "{:?}", store_entries(&env));
    env.stop().await;
}

/// A well-formed empty qcow2 v3 image of 1 GiB: header, refcount table,
/// refcount block and L1 table in 64 KiB clusters.
fn empty_qcow2() -> Vec<u8> {
    let cluster = 1usize << 16;
    let mut f = vec![0u8; 4 * cluster];
    let put32 = |f: &mut Vec<u8>, o: usize, v: u32| f[o..o + 4].copy_from_slice(&v.to_be_bytes());
    let put64 = |f: &mut Vec<u8>, o: usize, v: u64| f[o..o + 8].copy_from_slice(&v.to_be_bytes());
    f[0..4].copy_from_slice(b"QFI\xfb");
    put32(&mut f, 4, 3);
    put32(&mut f, 20, 16);
    put64(&mut f, 24, 1 << 30);
    put32(&mut f, 36, 2); // l1_size
    put64(&mut f, 40, 3 * cluster as u64); // l1_table_offset
    put64(&mut f, 48, cluster as u64); // refcount_table_offset
    put32(&mut f, 56, 1); // refcount_table_clusters
    put32(&mut f, 96, 4); // refcount_order
    put32(&mut f, 100, 104); // header_length
    put64(&mut f, cluster, 2 * cluster as u64); // refcount table → block
    for c in 0..4 {
        f[2 * cluster + 2 * c + 1] = 1; // 16-bit refcount 1
    }
    f
}

async fn qcow2_is_validated(backend: Backend) {
    let env = Env::start(backend).await;
    let admin = env.admin().await;
    let img = create(
        &env,
        &admin,
        json!({"name": "q", "disk_format": "qcow2", "container_format": "bare"}),
    )
    .await;
    let id = img["id"].as_str().unwrap().to_owned();
    let r = upload(&env, &admin, &id, random_bytes(300_000)).await;
    let m = nova_error(r, 400, "badRequest").await;
    assert!(m.contains("qcow2"), "{m}");
    assert_eq!(show(&env, &admin, &id).await["status"], "queued");
    assert!(store_entries(&env).is_empty());
    let r = upload(&env, &admin, &id, empty_qcow2()).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let img = show(&env, &admin, &id).await;
    assert_eq!(img["status"], "active");
    assert_eq!(img["virtual_size"], 1u64 << 30);
    assert_eq!(img["size"], 4 * 65536);
    // Raw with qcow2 bytes is just raw.
    let raw = create(
        &env,
        &admin,
        json!({"name": "r", "disk_format": "raw", "container_format": "bare"}),
    )
    .await;
    let r = upload(&env, &admin, raw["id"].as_str().unwrap(), empty_qcow2()).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // No formats: 400 before any data.
    let bare = create(&env, &admin, json!({"name": "n"})).await;
    let r = upload(&env, &admin, bare["id"].as_str().unwrap(), b"x".to_vec()).await;
    nova_error(r, 400, "badRequest").await;
    env.stop().await;
}

async fn listing_pages_and_filters(backend: Backend) {
    let env = Env::start(backend).await;
    let admin = env.admin().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let tags = if i % 2 == 0 {
            json!(["even"])
        } else {
            json!([])
        };
        let img = create(
            &env,
            &admin,
            json!({"name": format!("img-{i}"), "tags": tags, "disk_format": "raw",
            "container_format": "bare", "os_distro": if i == 3 { "debian" } else { "cirros" }}),
        )
        .await;
        ids.push(img["id"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Follow `next` with limit 3: 3 + 3 + 1, newest first, nothing twice.
    let mut url = format!("{}/v2/images?limit=3", env.image);
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let b: Value = env
            .call(&admin, Method::GET, &url, None)
            .await
            .json()
            .await
            .unwrap();
        pages += 1;
        for i in b["images"].as_array().unwrap() {
            seen.push(i["id"].as_str().unwrap().to_owned());
        }
        assert_eq!(b["first"], "/v2/images");
        assert_eq!(b["schema"], "/v2/schemas/images");
        match b["next"].as_str() {
            Some(n) => url = format!("{}{n}", env.image),
            None => break,
        }
        assert!(pages < 10);
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    assert!(pages >= 3);

    let names = |b: &Value| -> Vec<String> {
        b["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let get = |q: String| {
        let env = &env;
        let admin = &admin;
        async move {
            env.call(
                admin,
                Method::GET,
                &format!("{}/v2/images?{q}", env.image),
                None,
            )
            .await
        }
    };
    let b: Value = get("name=img-4".into()).await.json().await.unwrap();
    assert_eq!(names(&b), vec!["img-4"]);
    let b: Value = get(format!("id=in:{},{}", ids[1], ids[2]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(names(&b), vec!["img-2", "img-1"]);
    let b: Value = get("tag=even&sort_key=name&sort_dir=asc".into())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(names(&b), vec!["img-0", "img-2", "img-4", "img-6"]);
    let b: Value = get("sort=name:asc&limit=2".into())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(names(&b), vec!["img-0", "img-1"]);
    let next = b["next"].as_str().unwrap().to_owned();
    let b: Value = env
        .call(&admin, Method::GET, &format!("{}{next}", env.image), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(names(&b), vec!["img-2", "img-3"]);
    let b: Value = get("os_distro=debian".into()).await.json().await.unwrap();
    assert_eq!(names(&b), vec!["img-3"]);
    let b: Value = get("status=active".into()).await.json().await.unwrap();
    assert!(names(&b).is_empty());
    // Bad paging parameters.
    nova_error(get("limit=-1".into()).await, 400, "badRequest").await;
    nova_error(get("limit=x".into()).await, 400, "badRequest").await;
    nova_error(
        get(format!("marker={}", uuid::Uuid::new_v4())).await,
        400,
        "badRequest",
    )
    .await;
    nova_error(get("sort_key=nope".into()).await, 400, "badRequest").await;
    nova_error(get("visibility=nope".into()).await, 400, "badRequest").await;
    env.stop().await;
}

async fn visibility_across_projects(backend: Backend) {
    let env = Env::start(backend).await;
    let admin = env.admin().await;
    let a = env.user_with_role("pa", "alice", "member").await;
    let b = env.user_with_role("pb", "bob", "member").await;
    let fmt = json!({"disk_format": "raw", "container_format": "bare"});
    let with = |name: &str, vis: Option<&str>| {
        let mut v = fmt.clone();
        v["name"] = name.into();
        if let Some(vis) = vis {
            v["visibility"] = vis.into();
        }
        v
    };
    // Members can't publish; admins can.
    let r = env
        .call(
            &a,
            Method::POST,
            &format!("{}/v2/images", env.image),
            Some(with("x", Some("public"))),
        )
        .await;
    nova_error(r, 403, "forbidden").await;
    create(&env, &admin, with("public", Some("public"))).await;
    let private = create(&env, &a, with("a-private", Some("private"))).await;
    let shared = create(&env, &a, with("a-shared", None)).await;
    let community = create(&env, &a, with("a-community", Some("community"))).await;
    let pid = private["id"].as_str().unwrap();
    let sid = shared["id"].as_str().unwrap();
    let cid = community["id"].as_str().unwrap();
    let r = upload(&env, &a, pid, b"secret".to_vec()).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let list = |who: &Caller, q: &str| {
        let (env, who, q) = (&env, who.clone(), q.to_owned());
        async move {
            let b: Value = env
                .call(
                    &who,
                    Method::GET,
                    &format!("{}/v2/images?{q}", env.image),
                    None,
                )
                .await
                .json()
                .await
                .unwrap();
            let mut n: Vec<String> = b["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["name"].as_str().unwrap().to_owned())
                .collect();
            n.sort();
            n
        }
    };
    assert_eq!(
        list(&a, "").await,
        vec!["a-community", "a-private", "a-shared", "public"]
    );
    assert_eq!(list(&b, "").await, vec!["public"]);
    assert_eq!(list(&b, "visibility=community").await, vec!["a-community"]);
    assert_eq!(list(&b, "visibility=private").await, Vec::<String>::new());
    // Another project's private image: 404 for show, download, update, delete.
    for (m, path) in [
        (Method::GET, format!("/v2/images/{pid}")),
        (Method::GET, format!("/v2/images/{pid}/file")),
        (Method::DELETE, format!("/v2/images/{pid}")),
    ] {
        let r = env.call(&b, m, &format!("{}{path}", env.image), None).await;
        nova_error(r, 404, "itemNotFound").await;
    }
    // Community images are readable by id.
    assert_eq!(show(&env, &b, cid).await["name"], "a-community");
    // Shared: visible once b is a member, listed once b accepts.
    let r = env
        .call(
            &b,
            Method::GET,
            &format!("{}/v2/images/{sid}", env.image),
            None,
        )
        .await;
    nova_error(r, 404, "itemNotFound").await;
    let r = env
        .call(
            &a,
            Method::POST,
            &format!("{}/v2/images/{sid}/members", env.image),
            Some(json!({"member": b.project_id})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "pending");
    assert_eq!(show(&env, &b, sid).await["name"], "a-shared");
    assert_eq!(list(&b, "").await, vec!["public"]);
    let r = env
        .call(
            &b,
            Method::PUT,
            &format!("{}/v2/images/{sid}/members/{}", env.image, b.project_id),
            Some(json!({"status": "accepted"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(list(&b, "").await, vec!["a-shared", "public"]);
    // b can read but not change a's image.
    let r = env
        .http
        .patch(format!("{}/v2/images/{sid}", env.image))
        .header("x-auth-token", &b.token)
        .header(
            "content-type",
            "application/openstack-images-v2.1-json-patch",
        )
        .body(r#"[{"op": "replace", "path": "/name", "value": "mine"}]"#)
        .send()
        .await
        .unwrap();
    nova_error(r, 403, "forbidden").await;
    // The admin sees everything.
    assert_eq!(
        list(&admin, "").await,
        vec!["a-community", "a-private", "a-shared", "public"]
    );
    env.stop().await;
}

async fn patch(env: &Env, who: &Caller, id: &str, ops: Value) -> reqwest::Response {
    env.http
        .patch(format!("{}/v2/images/{id}", env.image))
        .header("x-auth-token", &who.token)
        .header(
            "content-type",
            "application/openstack-images-v2.1-json-patch",
        )
        .body(ops.to_string())
        .send()
        .await
        .unwrap()
}

async fn patches_and_bad_input(backend: Backend) {
    let env = Env::start(backend).await;
    let member = env.user_with_role("p", "alice", "member").await;
    let reader = env.user_with_role("p", "rita", "reader").await;
    let img = create(
        &env,
        &member,
        json!({"name": "p", "disk_format": "raw", "container_format": "bare"}),
    )
    .await;
    let id = img["id"].as_str().unwrap().to_owned();
    let url = format!("{}/v2/images", env.image);

    let r = patch(
        &env,
        &member,
        &id,
        json!([
            {"op": "replace", "path": "/name", "value": "renamed"},
            {"op": "add", "path": "/os_distro", "value": "debian"},
            {"op": "add", "path": "/min_ram", "value": 512},
            {"op": "add", "path": "/tags", "value": ["t1"]}
        ]),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["name"], "renamed");
    assert_eq!(b["os_distro"], "debian");
    assert_eq!(b["min_ram"], 512);
    assert_eq!(b["tags"], json!(["t1"]));
    let r = patch(
        &env,
        &member,
        &id,
        json!([{"op": "remove", "path": "/os_distro"}]),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.json::<Value>().await.unwrap().get("os_distro").is_none());

    // Errors, and the image unchanged after each.
    nova_error(
        patch(
            &env,
            &member,
            &id,
            json!([{"op": "replace", "path": "/status", "value": "active"}]),
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    nova_error(
        patch(
            &env,
            &member,
            &id,
            json!([{"op": "replace", "path": "/nope", "value": "x"}]),
        )
        .await,
        409,
        "conflictingRequest",
    )
    .await;
    nova_error(
        patch(
            &env,
            &member,
            &id,
            json!([{"op": "copy", "path": "/name", "from": "/x"}]),
        )
        .await,
        400,
        "badRequest",
    )
    .await;
    nova_error(
        patch(
            &env,
            &member,
            &id,
            json!([{"op": "replace", "path": "/min_ram", "value": "lots"}]),
        )
        .await,
        400,
        "badRequest",
    )
    .await;
    nova_error(
        patch(
            &env,
            &member,
            &id,
            json!([{"op": "replace", "path": "/visibility", "value": "public"}]),
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    nova_error(
        patch(
            &env,
            &reader,
            &id,
            json!([{"op": "replace", "path": "/name", "value": "r"}]),
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    let r = env
        .http
        .patch(format!("{url}/{id}"))
        .header("x-auth-token", &member.token)
        .header("content-type", "application/json")
        .body("[]")
        .send()
        .await
        .unwrap();
    nova_error(r, 415, "badMediaType").await;
    let r = env
        .http
        .patch(format!("{url}/{id}"))
        .header("x-auth-token", &member.token)
        .header(
            "content-type",
            "application/openstack-images-v2.1-json-patch",
        )
        .body("[{\"op\": ")
        .send()
        .await
        .unwrap();
    nova_error(r, 400, "badRequest").await;
    let now = show(&env, &member, &id).await;
    assert_eq!(now["name"], "renamed");
    assert_eq!(now["min_ram"], 512);
    assert_eq!(now["visibility"], "shared");

    // Create-time errors leave no image behind.
    let before = env.cloud.app.db.pool().clone();
    let count = || async {
        mica_controller::db::images::count_images(&before)
            .await
            .unwrap()
    };
    let n0 = count().await;
    let r = env
        .http
        .post(&url)
        .header("x-auth-token", &member.token)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    nova_error(r, 400, "badRequest").await;
    for bad in [
        json!({"min_disk": "x"}),
        json!({"disk_format": "vmdk"}),
        json!({"protected": "yes"}),
        json!({"id": "not-a-uuid"}),
        json!({"tags": "x"}),
        json!({"extra": 5}),
        json!([1, 2]),
    ] {
        let r = env
            .call(&member, Method::POST, &url, Some(bad.clone()))
            .await;
        nova_error(r, 400, "badRequest").await;
    }
    for bad in [
        json!({"status": "active"}),
        json!({"checksum": "x"}),
        json!({"os_glance_x": "y"}),
    ] {
        let r = env.call(&member, Method::POST, &url, Some(bad)).await;
        nova_error(r, 403, "forbidden").await;
    }
    let r = env
        .call(&reader, Method::POST, &url, Some(json!({"name": "r"})))
        .await;
    nova_error(r, 403, "forbidden").await;
    let r = env
        .call(&member, Method::POST, &url, Some(json!({"id": id})))
        .await;
    nova_error(r, 409, "conflictingRequest").await;
    assert_eq!(count().await, n0);

    // Protected images can't be deleted; tags.
    assert_eq!(
        patch(
            &env,
            &member,
            &id,
            json!([{"op": "replace", "path": "/protected", "value": true}])
        )
        .await
        .status(),
        StatusCode::OK
    );
    nova_error(
        env.call(&member, Method::DELETE, &format!("{url}/{id}"), None)
            .await,
        403,
        "forbidden",
    )
    .await;
    assert_eq!(
        env.call(&member, Method::PUT, &format!("{url}/{id}/tags/t2"), None)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(show(&env, &member, &id).await["tags"], json!(["t1", "t2"]));
    assert_eq!(
        env.call(
            &member,
            Method::DELETE,
            &format!("{url}/{id}/tags/t1"),
            None
        )
        .await
        .status(),
        StatusCode::NO_CONTENT
    );
    nova_error(
        env.call(
            &member,
            Method::DELETE,
            &format!("{url}/{id}/tags/t1"),
            None,
        )
        .await,
        404,
        "itemNotFound",
    )
    .await;
    assert_eq!(
        patch(
            &env,
            &member,
            &id,
            json!([{"op": "replace", "path": "/protected", "value": false}])
        )
        .await
        .status(),
        StatusCode::OK
    );
    assert_eq!(
        env.call(&member, Method::DELETE, &format!("{url}/{id}"), None)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    // Unknown routes and methods.
    nova_error(
        env.call(
            &member,
            Method::GET,
            &format!("{}/v2/nothing", env.image),
            None,
        )
        .await,
        404,
        "itemNotFound",
    )
    .await;
    nova_error(
        env.call(&member, Method::PUT, &url, None).await,
        405,
        "badMethod",
    )
    .await;
    env.stop().await;
}

async fn versions_and_schemas(backend: Backend) {
    let env = Env::start(backend).await;
    let r = env
        .http
        .get(format!("{}/", env.image))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::MULTIPLE_CHOICES);
    let b: Value = r.json().await.unwrap();
    let current: Vec<&Value> = b["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["status"] == "CURRENT")
        .collect();
    assert_eq!(current.len(), 1);
    assert!(current[0]["id"].as_str().unwrap().starts_with("v2."));
    assert_eq!(current[0]["links"][0]["href"], format!("{}/v2/", env.image));
    let r = env
        .http
        .get(format!("{}/versions", env.image))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let admin = env.admin().await;
    for s in ["image", "images", "member", "members", "metadefs/namespace"] {
        let r = env
            .call(
                &admin,
                Method::GET,
                &format!("{}/v2/schemas/{s}", env.image),
                None,
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{s}");
    }
    let b: Value = env
        .call(
            &admin,
            Method::GET,
            &format!("{}/v2/schemas/image", env.image),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        b["properties"]["disk_format"]["enum"],
        json!([null, "raw", "qcow2"])
    );
    env.stop().await;
}

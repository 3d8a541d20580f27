//! Generated files that are committed must match the code: the OpenAPI
//! documents (`controller/openapi/`) and the documented default
//! configuration (`controller/controller.toml.example`). To refresh them:
//! `MICA_UPDATE_GENERATED=1 cargo test -p mica-controller --test generated`.

use std::path::PathBuf;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check(path: PathBuf, generated: &str) {
    if std::env::var("MICA_UPDATE_GENERATED").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date with the code; regenerate it with \
         `MICA_UPDATE_GENERATED=1 cargo test -p mica-controller --test generated`",
        path.display()
    );
}

#[test]
fn openapi_documents_match_the_code() {
    let docs = mica_controller::api::openapi::documents();
    assert_eq!(docs.len(), 5);
    for (name, text) in docs {
        // Every documented operation has a response and a tag.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let paths = v["paths"].as_object().unwrap();
        assert!(paths.len() > 10, "{name} documents {} paths", paths.len());
        check(manifest().join("openapi").join(name), &text);
    }
}

#[test]
fn config_example_matches_the_code() {
    check(
        manifest().join("controller.toml.example"),
        &mica_controller::config::Config::defaults_toml(),
    );
}

//! The OpenAPI documents of Mica's APIs, generated from the handlers'
//! annotations. They are committed under `controller/openapi/`;
//! `mica-controller openapi <dir>` rewrites them and a test fails when the
//! committed files differ from what the code generates.

use utoipa::OpenApi;

/// Every API with a document: (file name, pretty JSON).
pub fn documents() -> Vec<(&'static str, String)> {
    let pretty = |doc: utoipa::openapi::OpenApi| {
        let mut s = doc.to_pretty_json().expect("OpenAPI documents serialize");
        s.push('\n');
        s
    };
    vec![
        (
            "compute.json",
            pretty(super::compute::ComputeApi::openapi()),
        ),
        (
            "identity.json",
            pretty(super::identity::IdentityApi::openapi()),
        ),
        ("image.json", pretty(super::image::ImageApi::openapi())),
        (
            "network.json",
            pretty(super::network::NetworkApi::openapi()),
        ),
        (
            "placement.json",
            pretty(super::placement::PlacementApi::openapi()),
        ),
    ]
}

/// Writes every document into `dir`.
pub fn write_all(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in documents() {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}

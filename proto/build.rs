//! Compiles `proto/herald/v1/*.proto` with protox (pure Rust, no protoc) and tonic-prost-build,
//! and writes the file descriptor set that server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/herald/v1/common.proto",
        "proto/herald/v1/delivery.proto",
        "proto/herald/v1/recipients.proto",
        "proto/herald/v1/engagement.proto",
        "proto/herald/v1/campaigns.proto",
        "proto/herald/v1/journeys.proto",
        "proto/herald/v1/internal.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // compile_fds does not write the descriptor set itself; reflection needs it on disk.
    std::fs::write(
        out_dir.join("herald_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    // Every service and client uses `codec::HeraldCodec`: prost's, except that a string field
    // that is not UTF-8 is INVALID_ARGUMENT naming the field. Type names (`prost::Name`) let it
    // find the rejected message's descriptor.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    // BTreeMap keeps map fields in key order, so a request encodes to the same bytes every
    // time and its payload hash can tell a retry from a conflicting reuse of a key.
    tonic_prost_build::configure()
        .btree_map(".")
        .codec_path("crate::codec::HeraldCodec")
        .compile_fds_with_config(descriptors, config)?;
    Ok(())
}

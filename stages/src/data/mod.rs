//! Data stages: Ingest (folders of images or the embedded demo set) → Split (stratified group
//! k-fold) → Preprocess (decode, crop, resize into u8 shards).

pub mod demo;
pub mod imageops;
pub mod ingest;
pub mod preprocess;
pub mod split;

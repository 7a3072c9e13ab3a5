//! Split models (`NAME-00001-of-0000N.gguf`). SKELETON.

use std::path::{Path, PathBuf};

/// The paths of all `count` files of the split model whose first file is `first`.
pub fn split_paths(first: &Path, count: u16) -> Vec<PathBuf> {
    vec![first.to_path_buf(); count as usize]
}

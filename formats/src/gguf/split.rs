//! Split models (`NAME-00001-of-0000N.gguf`), as llama.cpp's `gguf-split` writes them.
//!
//! Every part carries `split.no` (u16, 0-based), `split.count` (u16) and
//! `split.tensors.count` (i32, the tensor total over all parts); the first part also holds the
//! model's metadata. [`crate::GgufModel::open`] on any part opens them all.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{Metadata, Value};
use crate::{FormatError, Result};

/// Key of the 0-based index of a part.
pub const SPLIT_NO_KEY: &str = "split.no";
/// Key of the number of parts.
pub const SPLIT_COUNT_KEY: &str = "split.count";
/// Key of the total number of tensors over all parts.
pub const SPLIT_TENSORS_COUNT_KEY: &str = "split.tensors.count";

/// The split keys of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitInfo {
    /// 0-based index of this part (`split.no`).
    pub no: u16,
    /// Number of parts (`split.count`), at least 1.
    pub count: u16,
    /// Total tensors over all parts (`split.tensors.count`), if present.
    pub tensors_count: Option<u64>,
}

/// Reads and checks the split keys of a file's metadata: `None` if it has none (an unsplit
/// model). Any integer type is accepted for the keys as long as the value is in range.
pub fn split_info(md: &Metadata) -> Result<Option<SplitInfo>> {
    let count = md.get(SPLIT_COUNT_KEY);
    let no = md.get(SPLIT_NO_KEY);
    let tensors = md.get(SPLIT_TENSORS_COUNT_KEY);
    if count.is_none() && no.is_none() && tensors.is_none() {
        return Ok(None);
    }
    let count = match count {
        None => 1,
        Some(v) => match small_int(v) {
            Some(c) if c >= 1 => c,
            _ => return Err(bad(SPLIT_COUNT_KEY, v, "an integer from 1 to 65535")),
        },
    };
    let no = match no {
        None if count == 1 => 0,
        None => return Err(FormatError::MissingKey(SPLIT_NO_KEY.to_string())),
        Some(v) => match small_int(v) {
            Some(n) if n < count => n,
            _ => {
                return Err(bad(
                    SPLIT_NO_KEY,
                    v,
                    &format!("an integer below split.count ({count})"),
                ))
            }
        },
    };
    let tensors_count = match tensors {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| bad(SPLIT_TENSORS_COUNT_KEY, v, "a non-negative integer"))?,
        ),
    };
    Ok(Some(SplitInfo {
        no,
        count,
        tensors_count,
    }))
}

fn small_int(v: &Value) -> Option<u16> {
    v.as_u64().and_then(|n| u16::try_from(n).ok())
}

fn bad(key: &str, v: &Value, expected: &str) -> FormatError {
    FormatError::BadKey {
        key: key.to_string(),
        reason: format!("is {v:?}, expected {expected}"),
    }
}

/// Splits a path of the form `PREFIX-NNNNN-of-MMMMM.gguf` into `PREFIX` (with its directory),
/// the 1-based part number `NNNNN` and the part count `MMMMM`. `None` for other names.
pub fn parse_split_path(path: &Path) -> Option<(PathBuf, u16, u16)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, no) = rest.rsplit_once('-')?;
    let count = five_digits(count)?;
    let no = five_digits(no)?;
    if prefix.is_empty() {
        return None;
    }
    Some((path.with_file_name(prefix), no, count))
}

fn five_digits(s: &str) -> Option<u16> {
    if s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// The paths of all `count` files of the split model one of whose files is `first` (normally
/// the first, `NAME-00001-of-0000N.gguf`; any part's name gives the same answer).
///
/// If `first` does not follow the split naming, its name without `.gguf` is the prefix, as in
/// llama.cpp's `llama_split_path`.
pub fn split_paths(first: &Path, count: u16) -> Vec<PathBuf> {
    let prefix: OsString = match parse_split_path(first) {
        Some((prefix, _, _)) => prefix.into_os_string(),
        None => match first.to_str().and_then(|s| s.strip_suffix(".gguf")) {
            Some(stem) => stem.into(),
            None => first.as_os_str().to_owned(),
        },
    };
    (1..=count)
        .map(|i| {
            let mut p = prefix.clone();
            p.push(format!("-{i:05}-of-{count:05}.gguf"));
            PathBuf::from(p)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_from_any_part() {
        let want: Vec<PathBuf> = [
            "d/m-00001-of-00003.gguf",
            "d/m-00002-of-00003.gguf",
            "d/m-00003-of-00003.gguf",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(split_paths(Path::new("d/m-00001-of-00003.gguf"), 3), want);
        assert_eq!(split_paths(Path::new("d/m-00002-of-00003.gguf"), 3), want);
        assert_eq!(split_paths(Path::new("d/m.gguf"), 3), want);
        assert_eq!(
            parse_split_path(Path::new("a-b-00002-of-00010.gguf")),
            Some((PathBuf::from("a-b"), 2, 10))
        );
        assert_eq!(parse_split_path(Path::new("a-2-of-3.gguf")), None);
        assert_eq!(parse_split_path(Path::new("-00001-of-00002.gguf")), None);
    }

    #[test]
    fn info_checks_ranges() {
        let mut md = Metadata::new();
        assert_eq!(split_info(&md).unwrap(), None);
        md.set(SPLIT_COUNT_KEY, Value::U16(3));
        assert!(matches!(split_info(&md), Err(FormatError::MissingKey(_))));
        md.set(SPLIT_NO_KEY, Value::U16(3));
        assert!(matches!(split_info(&md), Err(FormatError::BadKey { .. })));
        md.set(SPLIT_NO_KEY, Value::U16(2));
        md.set(SPLIT_TENSORS_COUNT_KEY, Value::I32(-1));
        assert!(matches!(split_info(&md), Err(FormatError::BadKey { .. })));
        md.set(SPLIT_TENSORS_COUNT_KEY, Value::I32(7));
        assert_eq!(
            split_info(&md).unwrap(),
            Some(SplitInfo {
                no: 2,
                count: 3,
                tensors_count: Some(7)
            })
        );
        md.set(SPLIT_COUNT_KEY, Value::U16(0));
        assert!(matches!(split_info(&md), Err(FormatError::BadKey { .. })));
    }
}

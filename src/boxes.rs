//! Box archives seen from `stack` (`stack box verify`): the format is the platform's own
//! (`crates/boxarchive`, shared with the runners); here an archive is checked offline, as
//! `restic check` checks a repository, and summarised.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Why an archive did not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The file could not be opened.
    #[error("cannot open {}: {source}; check the path", .path.display())]
    Open {
        /// The archive.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The archive is damaged or refused, naming what is wrong.
    #[error("{} does not verify: {source}", .path.display())]
    Refused {
        /// The archive.
        path: PathBuf,
        /// What is wrong (a member's checksum, a path, the format, ...).
        #[source]
        source: boxarchive::ArchiveError,
    },
}

/// What a verified archive holds.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verified {
    /// The archive.
    pub path: PathBuf,
    /// Its format version.
    pub format_version: u32,
    /// The box: id, name, image, options, when it was exported.
    #[serde(flatten)]
    pub info: boxarchive::BoxInfo,
    /// How many members its disk has.
    pub members: usize,
    /// Their files' bytes.
    pub bytes: u64,
}

/// Reads the archive at `path` whole and checks every member against its manifest.
pub fn verify_file(path: &Path) -> Result<Verified, VerifyError> {
    let file = std::fs::File::open(path).map_err(|source| VerifyError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let manifest = boxarchive::verify(std::io::BufReader::new(file)).map_err(|source| {
        VerifyError::Refused {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(Verified {
        path: path.to_path_buf(),
        format_version: manifest.format_version,
        members: manifest.members.len(),
        bytes: manifest.members.iter().map(|m| m.size).sum(),
        info: manifest.info,
    })
}

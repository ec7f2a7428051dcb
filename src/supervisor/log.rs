//! Service logs: one file per service, each line stamped with time and stream, capped in size
//! (the full file rotates to `.1`). Readers merge several services' files in time order.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Default size at which a service log rotates.
pub const DEFAULT_LOG_CAP: u64 = 16 * 1024 * 1024;

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The service's stdout.
    Out,
    /// The service's stderr.
    Err,
    /// The supervisor's own notes (spawned, exited, restarting).
    Sup,
}

impl Stream {
    fn tag(self) -> &'static str {
        match self {
            Self::Out => "out",
            Self::Err => "err",
            Self::Sup => "sup",
        }
    }
}

/// An append-only, size-capped log file.
pub struct LogSink {
    path: PathBuf,
    file: File,
    size: u64,
    cap: u64,
}

impl LogSink {
    /// Opens (appending) the log at `path`, rotating once it exceeds `cap` bytes.
    pub fn open(path: &Path, cap: u64) -> io::Result<LogSink> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogSink {
            path: path.to_path_buf(),
            file,
            size,
            cap: cap.max(1024),
        })
    }

    /// Appends one line.
    pub fn line(&mut self, stream: Stream, text: &str) {
        let ts = humantime::format_rfc3339_micros(SystemTime::now());
        let text = text.trim_end_matches(['\n', '\r']);
        let entry = format!("{ts} {} {text}\n", stream.tag());
        if self.size + entry.len() as u64 > self.cap {
            self.rotate();
        }
        if self.file.write_all(entry.as_bytes()).is_ok() {
            self.size += entry.len() as u64;
        }
    }

    fn rotate(&mut self) {
        let old = rotated(&self.path);
        let _ = std::fs::rename(&self.path, &old);
        if let Ok(f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            self.file = f;
            self.size = 0;
        }
    }
}

/// The rotated sibling of a log file.
pub fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// One parsed log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// RFC 3339 timestamp (sorts lexically in time order: all are UTC with fixed precision).
    pub ts: String,
    /// Stream tag (`out`, `err`, `sup`).
    pub stream: String,
    /// The text.
    pub text: String,
}

/// Parses `<ts> <stream> <text>`; lines that do not match are kept as text.
pub fn parse_line(line: &str) -> Entry {
    let mut parts = line.splitn(3, ' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(ts), Some(stream @ ("out" | "err" | "sup")), text) if ts.ends_with('Z') => Entry {
            ts: ts.to_string(),
            stream: stream.to_string(),
            text: text.unwrap_or("").to_string(),
        },
        _ => Entry {
            ts: String::new(),
            stream: "out".into(),
            text: line.to_string(),
        },
    }
}

/// Reads the entries of a service's log (rotated part first).
pub fn read_entries(path: &Path) -> Vec<Entry> {
    let mut out = Vec::new();
    for p in [rotated(path), path.to_path_buf()] {
        if let Ok(f) = File::open(&p) {
            for line in BufReader::new(f).lines().map_while(Result::ok) {
                out.push(parse_line(&line));
            }
        }
    }
    out
}

/// The last `n` lines of a service's log, as plain text.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let entries = read_entries(path);
    entries[entries.len().saturating_sub(n)..]
        .iter()
        .map(|e| e.text.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_stamped_parsed_and_rotated_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.log");
        let mut sink = LogSink::open(&path, 1024).unwrap();
        for i in 0..100 {
            sink.line(Stream::Out, &format!("line {i} {}", "x".repeat(20)));
        }
        sink.line(Stream::Sup, "exited\n");
        assert!(std::fs::metadata(&path).unwrap().len() <= 1024);
        assert!(rotated(&path).exists());
        let entries = read_entries(&path);
        let last = entries.last().unwrap();
        assert_eq!(
            (last.stream.as_str(), last.text.as_str()),
            ("sup", "exited")
        );
        let mut sorted = entries.clone();
        sorted.sort_by(|a, b| a.ts.cmp(&b.ts));
        assert_eq!(sorted, entries, "timestamps sort in write order");
        assert_eq!(tail(&path, 1), vec!["exited".to_string()]);
    }
}

//! Crash-safe files: whole old or whole new, never partial (invariant I5).
//!
//! A save is, in order:
//! 1. write the document to `NAME.tmp` in the same directory and fsync it;
//! 2. make `NAME.bak` a hard link to the current `NAME` (the previous good
//!    version; a copy where links are not supported);
//! 3. rename `NAME.tmp` over `NAME` — atomic on POSIX file systems;
//! 4. fsync the directory, so the rename itself is durable.
//!
//! At every instant `NAME` is a complete old or new document, and `NAME.bak`
//! is a complete previous one. Loading falls back to the backup when the main
//! file is missing or unreadable — and says so; both unreadable is an error
//! that leaves the files alone for the player to rescue.
//!
//! # The log: a save costs what changed
//! Writing the whole document for every change costs what the document
//! weighs — ten thousand items, a thousand pending trades — at every
//! settlement. So between two such writes, changes are *appended* to
//! `NAME.log` instead: one line per batch, fsynced ([`SaveFs::append_synced`]).
//! The log's first line names the document it continues (`log_epoch`, which
//! every document write changes); a load applies the log's complete lines
//! to the document they continue and ignores a log of another document (one
//! written before a crash cut a document write short, or the main file's
//! log when the backup is loaded). A line cut short by a crash ends the
//! log: nothing after it is read, and the writer starts a fresh document
//! before appending again. The document is rewritten — and the log started
//! afresh — when the log grows past the document's own size (so writing
//! costs, amortised, about twice what changed), after any failed write, and
//! on load from the backup.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::state::{PlayerState, SCHEMA_VERSION};

/// The file operations a save uses. Tests wrap the real file system to fail
/// a step on purpose (disk full, read-only); the game uses [`RealFs`].
pub trait SaveFs: Send + 'static {
    fn write_synced(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Appends `bytes` to `path` (which exists) and makes them durable.
    fn append_synced(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    fn link_or_copy(&mut self, from: &Path, to: &Path) -> io::Result<()>;
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()>;
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl SaveFs for RealFs {
    fn write_synced(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.write_all(bytes)?;
        file.sync_all()
    }

    fn append_synced(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut file = OpenOptions::new().append(true).open(path)?;
        file.write_all(bytes)?;
        file.sync_data()
    }

    fn link_or_copy(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        match fs::remove_file(to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match fs::hard_link(from, to) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(e),
            Err(_) => fs::copy(from, to).map(|_| ()),
        }
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        durable_rename(from, to)
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        #[cfg(unix)]
        {
            File::open(dir)?.sync_all()
        }
        #[cfg(windows)]
        {
            // A directory handle (FILE_FLAG_BACKUP_SEMANTICS) can be flushed
            // on NTFS, which writes the directory's entries — the rename —
            // to disk. Best effort: file systems that refuse it (FAT, some
            // network shares) still had the rename made with
            // MOVEFILE_WRITE_THROUGH.
            use std::os::windows::fs::OpenOptionsExt;
            const FILE_FLAG_BACKUP_SEMANTICS: u32 = 0x0200_0000;
            if let Ok(handle) = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(FILE_FLAG_BACKUP_SEMANTICS)
                .open(dir)
            {
                let _ = handle.sync_all();
            }
            Ok(())
        }
        #[cfg(not(any(unix, windows)))]
        {
            let _ = dir;
            Ok(())
        }
    }
}

/// Replaces `to` with `from`. POSIX: `rename(2)`, atomic; the directory
/// fsync that follows makes it durable.
#[cfg(not(windows))]
fn durable_rename(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)
}

/// Replaces `to` with `from` on Windows. `std::fs::rename` uses
/// `MoveFileExW(…, MOVEFILE_REPLACE_EXISTING)` alone, which may return
/// before the move reaches the disk. `MOVEFILE_WRITE_THROUGH` makes it
/// return only once the move is flushed — documented for moves done as a
/// copy (another volume); for a rename within a directory the flush of the
/// directory handle that follows (`sync_dir`) is the counterpart of our
/// POSIX directory fsync. The file's own data was flushed
/// (`FlushFileBuffers`, through `sync_all`) before.
#[cfg(windows)]
fn durable_rename(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::windows::ffi::OsStrExt;

    const MOVEFILE_REPLACE_EXISTING: u32 = 0x1;
    const MOVEFILE_WRITE_THROUGH: u32 = 0x8;
    // kernel32 is linked by std on every Windows target.
    #[link(name = "kernel32")]
    extern "system" {
        fn MoveFileExW(existing: *const u16, new: *const u16, flags: u32) -> i32;
    }
    let wide = |p: &Path| -> Vec<u16> { p.as_os_str().encode_wide().chain(Some(0)).collect() };
    let (from_w, to_w) = (wide(from), wide(to));
    // SAFETY: both buffers are NUL-terminated UTF-16 strings that live for
    // the whole call; the function reads them and keeps no pointer.
    let ok = unsafe {
        MoveFileExW(
            from_w.as_ptr(),
            to_w.as_ptr(),
            MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH,
        )
    };
    if ok == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn backup_path(path: &Path) -> PathBuf {
    with_suffix(path, ".bak")
}

pub fn temp_path(path: &Path) -> PathBuf {
    with_suffix(path, ".tmp")
}

/// The append-only log beside the save file.
pub fn log_path(path: &Path) -> PathBuf {
    with_suffix(path, ".log")
}

/// The first line of a log: the document it continues.
#[derive(serde::Serialize, serde::Deserialize)]
struct LogHeader {
    log_epoch: u64,
}

/// One appended line: the changes of generations up to `g`.
#[derive(serde::Serialize, serde::Deserialize)]
struct LogLine<T> {
    g: u64,
    d: T,
}

/// Starts the log of the document with `epoch`, replacing any other log
/// whole (temp file, rename, directory sync: a crash leaves the old log or
/// the new one). Returns its size.
pub fn start_log(fs: &mut dyn SaveFs, path: &Path, epoch: u64) -> io::Result<u64> {
    let mut header =
        serde_json::to_vec(&LogHeader { log_epoch: epoch }).map_err(io::Error::other)?;
    header.push(b'\n');
    let log = log_path(path);
    let tmp = with_suffix(&log, ".tmp");
    fs.write_synced(&tmp, &header)?;
    fs.rename(&tmp, &log)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs.sync_dir(&dir)?;
    Ok(header.len() as u64)
}

/// Appends one line of changes to the log; returns its size in bytes.
pub fn append_log<T: serde::Serialize>(
    fs: &mut dyn SaveFs,
    path: &Path,
    generation: u64,
    changes: &T,
) -> io::Result<u64> {
    let mut line = serde_json::to_vec(&LogLine {
        g: generation,
        d: changes,
    })
    .map_err(io::Error::other)?;
    line.push(b'\n');
    fs.append_synced(&log_path(path), &line)?;
    Ok(line.len() as u64)
}

/// The epoch the log beside `path` names (its header), if it has one.
pub fn log_epoch(path: &Path) -> Option<u64> {
    let file = File::open(log_path(path)).ok()?;
    let mut first = String::new();
    io::BufRead::read_line(&mut io::BufReader::new(file), &mut first).ok()?;
    serde_json::from_str::<LogHeader>(first.trim_end())
        .ok()
        .map(|h| h.log_epoch)
}

/// What the log beside a document says.
pub struct LogRead<T> {
    /// The changes of each complete line, in order.
    pub batches: Vec<T>,
    /// The log continues this document and ends cleanly: appending to it
    /// may go on. False: no log, another document's, or one cut short —
    /// the next write must be a whole document.
    pub usable: bool,
    /// Its size (of the part read).
    pub bytes: u64,
}

/// Reads the log continuing the document with `epoch`.
pub fn read_log<T: serde::de::DeserializeOwned>(path: &Path, epoch: u64) -> LogRead<T> {
    let nothing = LogRead {
        batches: Vec::new(),
        usable: false,
        bytes: 0,
    };
    let Ok(bytes) = fs::read(log_path(path)) else {
        return nothing;
    };
    let mut lines = bytes.split_inclusive(|b| *b == b'\n');
    let Some(first) = lines.next() else {
        return nothing;
    };
    let header = first
        .strip_suffix(b"\n")
        .and_then(|l| serde_json::from_slice::<LogHeader>(l).ok());
    if header.is_none_or(|h| h.log_epoch != epoch) {
        return nothing;
    }
    let mut read = LogRead {
        batches: Vec::new(),
        usable: true,
        bytes: first.len() as u64,
    };
    for line in lines {
        // Only whole lines count: a crash may have cut the last one short.
        let parsed = line
            .strip_suffix(b"\n")
            .and_then(|l| serde_json::from_slice::<LogLine<T>>(l).ok());
        match parsed {
            Some(LogLine { d, .. }) => {
                read.batches.push(d);
                read.bytes += line.len() as u64;
            }
            None => {
                read.usable = false;
                break;
            }
        }
    }
    read
}

/// The file whose OS lock says "this save is open": `NAME.lock`. (The save
/// itself cannot carry the lock: every save replaces it with a new file.)
pub fn lock_path(path: &Path) -> PathBuf {
    with_suffix(path, ".lock")
}

/// A save's OS lock, released when dropped — explicitly, not by closing the
/// file: a child process the game (or a test) spawns at that moment holds a
/// copy of the descriptor until it `exec`s, and a `flock` lives as long as
/// any copy, so closing alone could leave the save locked against the next
/// store for a moment.
pub struct SaveLock(File);

impl Drop for SaveLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// Takes the exclusive OS lock of `path`'s save for as long as the returned
/// file is open: a second game instance, or a second store in this one,
/// gets [`LoadError::Locked`] and touches nothing. The lock is advisory
/// (`flock` on Unix, `LockFileEx` on Windows) and dies with the process, so a
/// crash never leaves a save locked.
///
/// Where no lock can be had — a read-only folder, a file system without
/// locks — the save still opens, unlocked (`Ok(None)`, with a warning):
/// the player keeps their data, and a read-only disk shows up as failing
/// saves rather than as no data at all.
pub fn lock(path: &Path) -> Result<Option<SaveLock>, LoadError> {
    let lock_file = lock_path(path);
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_file)
    {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(path = %lock_file.display(), error = %e, "cannot create the lock file; the save is not protected against a second instance");
            return Ok(None);
        }
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(SaveLock(file))),
        Err(std::fs::TryLockError::WouldBlock) => Err(LoadError::Locked {
            path: path.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => {
            tracing::warn!(path = %lock_file.display(), error = %e, "this file system cannot lock; the save is not protected against a second instance");
            Ok(None)
        }
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Writes `bytes` as the new version of `path` (steps 1–4 above).
pub fn save_atomically(fs: &mut dyn SaveFs, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = temp_path(path);
    fs.write_synced(&tmp, bytes)?;
    if path.exists() {
        fs.link_or_copy(path, &backup_path(path))?;
    }
    fs.rename(&tmp, path)?;
    fs.sync_dir(&dir)
}

/// Why a save file could not be loaded. Files are left as they are.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "{path} was written by a newer version of the game (save format {found}, this build reads up to {supported}); it was left untouched"
    )]
    NewerVersion {
        path: PathBuf,
        found: u64,
        supported: u32,
    },
    #[error("both {main} ({main_error}) and its backup ({backup_error}) are unreadable; they were left untouched for rescue")]
    BothUnreadable {
        main: PathBuf,
        main_error: String,
        backup_error: String,
    },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is open in another instance of the game (or another LocalPlayerData node uses the same save_path); close that one first. Nothing was read or written")]
    Locked { path: PathBuf },
}

/// What loading found.
#[derive(Debug)]
pub struct Loaded {
    /// `None`: no save exists yet (a new player).
    pub state: Option<PlayerState>,
    /// Set when the main file was missing or unreadable and the backup was
    /// used: the message for the player / the log.
    pub recovered_from_backup: Option<String>,
}

enum Attempt {
    Missing,
    Good(Box<PlayerState>),
    Bad(String),
}

fn read_one(path: &Path) -> Result<Attempt, LoadError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Attempt::Missing),
        Err(source) => {
            return Err(LoadError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    // Look at the version before the shape: a newer file must be refused
    // even if this build could not parse the rest of it.
    let value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return Ok(Attempt::Bad(format!("not valid JSON: {e}"))),
    };
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(v) if v > u64::from(SCHEMA_VERSION) => {
            return Err(LoadError::NewerVersion {
                path: path.to_path_buf(),
                found: v,
                supported: SCHEMA_VERSION,
            })
        }
        Some(_) => {}
        None => return Ok(Attempt::Bad("no schema version".into())),
    }
    let mut state: PlayerState = match serde_json::from_value(value) {
        Ok(s) => s,
        Err(e) => return Ok(Attempt::Bad(format!("unexpected content: {e}"))),
    };
    // Older versions are read and upgraded in memory; the next save writes
    // the current version. (1 → 2: journal entries gained `created_at`,
    // which defaults to 0.)
    state.version = SCHEMA_VERSION;
    if state.save_id.is_empty() {
        // Files before save ids get one derived from their device id: the
        // main file and its backup (the same device) agree on it, so a
        // backup loaded before any save wrote the id still owns the trades
        // made since the upgrade.
        state.save_id = crate::state::save_id_of_device(&state.device_id);
    }
    state.reindex();
    if let Err(problems) = state.validate() {
        return Ok(Attempt::Bad(format!(
            "inconsistent: {}",
            problems.join("; ")
        )));
    }
    Ok(Attempt::Good(Box::new(state)))
}

/// Loads `path`, falling back to its backup.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let backup = backup_path(path);
    let main_error = match read_one(path)? {
        Attempt::Good(state) => {
            return Ok(Loaded {
                state: Some(*state),
                recovered_from_backup: None,
            })
        }
        Attempt::Missing => None,
        Attempt::Bad(e) => Some(e),
    };
    match read_one(&backup)? {
        Attempt::Good(state) => {
            let why = main_error.as_deref().unwrap_or("missing");
            if main_error.is_some() {
                // Keep the damaged file for inspection; the next save writes
                // a fresh main file.
                let _ = fs::rename(path, with_suffix(path, ".corrupt"));
            }
            Ok(Loaded {
                state: Some(*state),
                recovered_from_backup: Some(format!(
                    "{} was {why}; loaded the previous save from {}",
                    path.display(),
                    backup.display()
                )),
            })
        }
        Attempt::Missing => match main_error {
            None => Ok(Loaded {
                state: None,
                recovered_from_backup: None,
            }),
            Some(main_error) => Err(LoadError::BothUnreadable {
                main: path.to_path_buf(),
                main_error,
                backup_error: "missing".into(),
            }),
        },
        Attempt::Bad(backup_error) => Err(LoadError::BothUnreadable {
            main: path.to_path_buf(),
            main_error: main_error.unwrap_or_else(|| "missing".into()),
            backup_error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real file system's save, on whatever platform the tests run on
    /// (under Wine for Windows: the `MoveFileExW` path): a save replaces the
    /// file whole, keeps the previous one as the backup, and a rename over
    /// an existing file succeeds.
    #[test]
    fn saves_replace_the_file_and_keep_the_previous_one() {
        let dir = std::env::temp_dir().join(format!(
            "persist-test-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("save.json");
        save_atomically(&mut RealFs, &path, b"first").unwrap();
        save_atomically(&mut RealFs, &path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(fs::read(backup_path(&path)).unwrap(), b"first");
        assert!(!temp_path(&path).exists(), "no temp file left");
        // A rename over an existing file (what every save after the first does).
        fs::write(dir.join("a"), b"a").unwrap();
        fs::write(dir.join("b"), b"b").unwrap();
        durable_rename(&dir.join("a"), &dir.join("b")).unwrap();
        assert_eq!(fs::read(dir.join("b")).unwrap(), b"a");
        assert!(!dir.join("a").exists());
        // A missing source is an error, not a silent success.
        assert!(durable_rename(&dir.join("missing"), &dir.join("b")).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}

//! A reproducible zip writer: the same files give the same bytes.
//!
//! Entries are written in sorted order with one fixed modification time
//! (the commit's), fixed Unix permissions, no extra fields and no comment,
//! so `dist/*.zip` is a function of the files alone. Written here from the
//! PKWARE APPNOTE rather than taken from a zip crate because the popular
//! ones stamp entries with the current time unless told otherwise at every
//! call, and pull compressors we never use; this is the whole format we need
//! (deflate, no zip64: the package is far below 4 GiB).

use std::collections::BTreeMap;
use std::io::{Read, Write};

use crate::Result;

/// One file to put in the archive.
pub struct Entry {
    pub data: Vec<u8>,
    pub executable: bool,
}

/// Writes `files` (path inside the archive → contents) as a zip whose every
/// entry is dated `unix_time`; directory entries are added for every parent.
pub fn write(files: &BTreeMap<String, Entry>, unix_time: u64) -> Result<Vec<u8>> {
    let (time, date) = dos_time(unix_time);
    // Every directory once, parents before children (BTreeMap order: "a/" < "a/b").
    let mut names: BTreeMap<String, Option<&Entry>> = BTreeMap::new();
    for (path, entry) in files {
        if path.starts_with('/') || path.contains("..") || path.contains('\\') {
            return Err(format!("bad path in archive: {path}").into());
        }
        let mut dir = String::new();
        for part in path
            .split('/')
            .rev()
            .skip(1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            dir.push_str(part);
            dir.push('/');
            names.entry(dir.clone()).or_insert(None);
        }
        names.insert(path.clone(), Some(entry));
    }

    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, entry) in &names {
        let offset = u32::try_from(out.len()).map_err(|_| "archive over 4 GiB")?;
        let (method, crc, compressed, size, mode): (u16, u32, Vec<u8>, usize, u32) = match entry {
            None => (0, 0, Vec::new(), 0, 0o040755),
            Some(e) => {
                let mut encoder =
                    flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
                encoder.write_all(&e.data)?;
                let compressed = encoder.finish()?;
                let mode = if e.executable { 0o100755 } else { 0o100644 };
                (8, crc32fast::hash(&e.data), compressed, e.data.len(), mode)
            }
        };
        let csize = u32::try_from(compressed.len()).map_err(|_| "entry over 4 GiB")?;
        let usize_ = u32::try_from(size).map_err(|_| "entry over 4 GiB")?;
        let name_len = u16::try_from(name.len()).map_err(|_| "name too long")?;

        // Local file header.
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&20u16.to_le_bytes()); // version needed: 2.0
        out.extend_from_slice(&0x0800u16.to_le_bytes()); // names are UTF-8
        out.extend_from_slice(&method.to_le_bytes());
        out.extend_from_slice(&time.to_le_bytes());
        out.extend_from_slice(&date.to_le_bytes());
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&csize.to_le_bytes());
        out.extend_from_slice(&usize_.to_le_bytes());
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // no extra field
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&compressed);

        // Its central directory record.
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&((3u16 << 8) | 20).to_le_bytes()); // made by: Unix, 2.0
        central.extend_from_slice(&20u16.to_le_bytes());
        central.extend_from_slice(&0x0800u16.to_le_bytes());
        central.extend_from_slice(&method.to_le_bytes());
        central.extend_from_slice(&time.to_le_bytes());
        central.extend_from_slice(&date.to_le_bytes());
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&csize.to_le_bytes());
        central.extend_from_slice(&usize_.to_le_bytes());
        central.extend_from_slice(&name_len.to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes()); // extra
        central.extend_from_slice(&0u16.to_le_bytes()); // comment
        central.extend_from_slice(&0u16.to_le_bytes()); // disk
        central.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        let dos_dir = if entry.is_none() { 0x10 } else { 0 };
        central.extend_from_slice(&((mode << 16) | dos_dir).to_le_bytes());
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let count = u16::try_from(names.len()).map_err(|_| "too many entries")?;
    let central_offset = u32::try_from(out.len()).map_err(|_| "archive over 4 GiB")?;
    let central_size = u32::try_from(central.len()).map_err(|_| "archive over 4 GiB")?;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&central_size.to_le_bytes());
    out.extend_from_slice(&central_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    Ok(out)
}

/// Reads back an archive this module wrote (stored or deflated entries,
/// sizes in the local headers): path → contents, directories left out.
/// Every CRC is checked.
pub fn read(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>> {
    let u16_at = |at: usize| -> Result<u16> {
        let b = bytes.get(at..at + 2).ok_or("truncated archive")?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| -> Result<u32> {
        let b = bytes.get(at..at + 4).ok_or("truncated archive")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut files = BTreeMap::new();
    let mut at = 0;
    while u32_at(at)? == 0x0403_4b50 {
        let method = u16_at(at + 8)?;
        let crc = u32_at(at + 14)?;
        let csize = u32_at(at + 18)? as usize;
        let size = u32_at(at + 22)? as usize;
        let name_len = usize::from(u16_at(at + 26)?);
        let extra_len = usize::from(u16_at(at + 28)?);
        let name_at = at + 30;
        let data_at = name_at + name_len + extra_len;
        let name = std::str::from_utf8(
            bytes
                .get(name_at..name_at + name_len)
                .ok_or("truncated archive")?,
        )?;
        let raw = bytes
            .get(data_at..data_at + csize)
            .ok_or("truncated archive")?;
        at = data_at + csize;
        if name.ends_with('/') {
            continue;
        }
        let data = match method {
            0 => raw.to_vec(),
            8 => {
                let mut data = Vec::with_capacity(size);
                flate2::read::DeflateDecoder::new(raw).read_to_end(&mut data)?;
                data
            }
            other => return Err(format!("{name}: compression method {other}").into()),
        };
        if data.len() != size || crc32fast::hash(&data) != crc {
            return Err(format!("{name}: damaged (size or CRC mismatch)").into());
        }
        files.insert(name.to_string(), data);
    }
    Ok(files)
}

/// MS-DOS time and date fields for a Unix time (UTC; 1980 at the earliest).
fn dos_time(unix_time: u64) -> (u16, u16) {
    let unix_time = unix_time.max(315_532_800); // 1980-01-01
    let days = (unix_time / 86_400) as i64;
    let secs = unix_time % 86_400;
    let (y, m, d) = civil_from_days(days);
    let time = ((secs / 3600) << 11) | (((secs % 3600) / 60) << 5) | ((secs % 60) / 2);
    let date = (((y - 1980) as u64) << 9) | ((m as u64) << 5) | d as u64;
    (time as u16, date as u16)
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_420), (2025, 11, 28));
        // 2024-02-29 12:34:56
        let (t, d) = dos_time(1_709_210_096);
        assert_eq!(d, ((2024 - 1980) << 9) | (2 << 5) | 29);
        assert_eq!(t, (12 << 11) | (34 << 5) | 28);
    }

    #[test]
    fn round_trip_and_reproducible() {
        // Noise, so the compressed library is most of the archive.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let lib: Vec<u8> = (0..10_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut files = BTreeMap::new();
        files.insert(
            "pkg/addons/a/bin/lib.so".to_string(),
            Entry {
                data: lib.clone(),
                executable: true,
            },
        );
        files.insert(
            "pkg/addons/a/README.md".to_string(),
            Entry {
                data: b"hi".to_vec(),
                executable: false,
            },
        );
        let one = write(&files, 1_700_000_000).unwrap();
        let two = write(&files, 1_700_000_000).unwrap();
        assert_eq!(one, two);
        let back = read(&one).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back["pkg/addons/a/bin/lib.so"], lib);
        // Directory entries first: the Asset Library installer finds the root.
        let first_name_len = u16::from_le_bytes([one[26], one[27]]) as usize;
        assert_eq!(&one[30..30 + first_name_len], b"pkg/");
        let mut damaged = one.clone();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 0xff;
        assert!(
            read(&damaged).is_err(),
            "a flipped byte in the library is found"
        );
    }

    #[test]
    fn refuses_escaping_paths() {
        let mut files = BTreeMap::new();
        files.insert(
            "../evil".to_string(),
            Entry {
                data: vec![],
                executable: false,
            },
        );
        assert!(write(&files, 0).is_err());
    }
}

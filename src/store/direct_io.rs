//! Writes of whole blocks that bypass the page cache (`O_DIRECT`), for the
//! message log's large groups.
//!
//! A buffered write copies every byte into the page cache first: for the
//! message log under load that copy was most of its thread's time (into
//! pages fresh to the kernel, which a VM's host backs only when touched),
//! for pages the log drops again once synced (`segment::Writer::uncache`).
//! A direct write hands the device the buffer itself. It needs the buffer,
//! the file offset and the length aligned to the device's block, so the
//! bytes are copied once into an aligned buffer of this module's (a copy
//! within the CPU's caches) and padded with zeros to a whole block.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// The alignment of direct writes: 4 KiB, the largest logical block of
/// common devices (512-byte devices take it too).
pub const BLOCK: u64 = 4096;

/// Most bytes copied into the aligned buffer for one write: a larger group
/// is written in pieces, so the buffer a writer keeps stays this size
/// whatever the largest group was.
const PIECE: usize = 1 << 20;

/// A file opened again for direct writes, with its aligned buffer.
#[derive(Debug)]
pub struct DirectFile {
    file: File,
    /// Room for the padded bytes and for the alignment: the aligned part
    /// starts at `buf.as_ptr().align_offset(BLOCK)`.
    buf: Vec<u8>,
}

impl DirectFile {
    /// Opens `path` (which exists) for direct writes; `None` where the
    /// file system has no direct I/O (tmpfs says `EINVAL`).
    pub fn open(path: &Path) -> Option<DirectFile> {
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()?;
        Some(DirectFile {
            file,
            buf: Vec::new(),
        })
    }

    /// Writes `bytes` at `at` (a multiple of [`BLOCK`]), the last block
    /// filled with zeros past them, [`PIECE`] bytes a write. An error may
    /// leave part of it written.
    pub fn write_blocks(&mut self, bytes: &[u8], at: u64) -> io::Result<()> {
        let mut at = at;
        for piece in bytes.chunks(PIECE) {
            self.write_piece(piece, at)?;
            at += PIECE as u64;
        }
        Ok(())
    }

    /// One write of at most [`PIECE`] bytes, padded to whole blocks.
    fn write_piece(&mut self, bytes: &[u8], at: u64) -> io::Result<()> {
        let padded = padded_len(bytes.len());
        let block = BLOCK as usize;
        if self.buf.len() < padded + block {
            // Grown up to a piece and a block, never shrunk.
            self.buf = vec![0; padded + block];
        }
        let start = self.buf.as_ptr().align_offset(block);
        let Some(out) = self.buf.get_mut(start..start + padded) else {
            return Err(io::Error::other("no aligned room in the direct buffer"));
        };
        let (data, zeros) = out.split_at_mut(bytes.len());
        data.copy_from_slice(bytes);
        zeros.fill(0);
        self.file.write_all_at(out, at)
    }
}

/// `len` rounded up to a whole number of blocks.
pub fn padded_len(len: usize) -> usize {
    len.div_ceil(BLOCK as usize) * BLOCK as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// Bytes written directly read back, the block's rest zeros, and bytes
    /// before them untouched; where the file system has no direct I/O,
    /// `open` says so rather than failing a write.
    #[test]
    fn blocks_written_directly_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 100]).expect("write");
        let Some(mut direct) = DirectFile::open(&path) else {
            // tmpfs: the log writes through the page cache instead.
            return;
        };
        let bytes: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8 + 1).collect();
        direct.write_blocks(&bytes, BLOCK).expect("direct write");
        let file = File::open(&path).expect("open");
        assert_eq!(file.metadata().expect("meta").len(), 3 * BLOCK);
        let mut back = vec![0u8; 3 * BLOCK as usize];
        file.read_exact_at(&mut back, 0).expect("read");
        assert_eq!(&back[..100], &[7u8; 100][..]);
        assert_eq!(&back[BLOCK as usize..BLOCK as usize + 5000], &bytes[..]);
        assert!(back[BLOCK as usize + 5000..].iter().all(|&b| b == 0));
        // A second, shorter write reuses the buffer: its block's rest is
        // zeros again, not the first write's bytes.
        direct.write_blocks(&bytes[..10], 2 * BLOCK).expect("again");
        file.read_exact_at(&mut back[..BLOCK as usize], 2 * BLOCK)
            .expect("read");
        assert_eq!(&back[..10], &bytes[..10]);
        assert!(back[10..BLOCK as usize].iter().all(|&b| b == 0));
    }

    /// A group of several pieces is written whole, and the buffer kept is
    /// a piece's.
    #[test]
    fn a_group_larger_than_a_piece_is_written_in_pieces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"").expect("create");
        let Some(mut direct) = DirectFile::open(&path) else {
            return;
        };
        let bytes: Vec<u8> = (0..(2 * PIECE + 777))
            .map(|i| (i % 253) as u8 + 1)
            .collect();
        direct.write_blocks(&bytes, 0).expect("direct write");
        assert!(direct.buf.len() <= PIECE + BLOCK as usize);
        let back = std::fs::read(&path).expect("read");
        assert_eq!(back.len(), padded_len(bytes.len()));
        assert_eq!(&back[..bytes.len()], &bytes[..]);
        assert!(back[bytes.len()..].iter().all(|&b| b == 0));
    }

    #[test]
    fn lengths_round_up_to_blocks() {
        assert_eq!(padded_len(0), 0);
        assert_eq!(padded_len(1), 4096);
        assert_eq!(padded_len(4096), 4096);
        assert_eq!(padded_len(4097), 8192);
    }
}

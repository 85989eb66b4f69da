//! Positional reads from the medium that holds a bbolt file.

use std::cell::RefCell;
use std::io::{self, Read, Seek, SeekFrom};

/// A byte source read at absolute offsets, like `pread(2)`.
///
/// The reader asks for one page (or one run of overflow pages) at a time and never for the whole
/// file, so a 1 GiB snapshot costs the memory of a few pages. Implemented for files (on Unix,
/// with positional reads that need no `&mut`), byte slices and vectors (tests, fuzzing), and any
/// `Read + Seek` through [`SeekReader`].
pub trait ReadAt {
    /// The number of bytes the source holds.
    fn size(&self) -> io::Result<u64>;

    /// Fills `buf` with the bytes at `offset ..`; fails with
    /// [`io::ErrorKind::UnexpectedEof`] when the source ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for [u8] {
    fn size(&self) -> io::Result<u64> {
        u64::try_from(self.len()).map_err(io::Error::other)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let end = start.checked_add(buf.len()).ok_or_else(eof)?;
        let src = self.get(start..end).ok_or_else(eof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> io::Result<u64> {
        self.as_slice().size()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
}

#[cfg(unix)]
impl ReadAt for std::fs::File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

#[cfg(not(unix))]
impl ReadAt for std::fs::File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        // Without positional reads, seek the shared handle: `&File` is `Read + Seek`.
        let mut file = self;
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(buf)
    }
}

/// Adapts any `Read + Seek` (a file on a platform without positional reads, a cursor, a
/// decompressing reader that can seek) to [`ReadAt`]. Each read seeks first, so a source that
/// is read in order costs no more than plain reads.
#[derive(Debug)]
pub struct SeekReader<R> {
    inner: RefCell<R>,
}

impl<R: Read + Seek> SeekReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        SeekReader { inner: RefCell::new(inner) }
    }

    /// Gives the wrapped reader back.
    pub fn into_inner(self) -> R {
        self.inner.into_inner()
    }
}

impl<R: Read + Seek> ReadAt for SeekReader<R> {
    fn size(&self) -> io::Result<u64> {
        let mut inner = self.inner.try_borrow_mut().map_err(io::Error::other)?;
        inner.seek(SeekFrom::End(0))
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut inner = self.inner.try_borrow_mut().map_err(io::Error::other)?;
        inner.seek(SeekFrom::Start(offset))?;
        inner.read_exact(buf)
    }
}

fn eof() -> io::Error {
    io::Error::from(io::ErrorKind::UnexpectedEof)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_read_in_range_and_refuse_past_the_end() {
        let data = vec![1u8, 2, 3, 4];
        let mut buf = [0u8; 2];
        data.read_exact_at(&mut buf, 2).unwrap();
        assert_eq!(buf, [3, 4]);
        let err = data.read_exact_at(&mut buf, 3).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let err = data.read_exact_at(&mut buf, u64::MAX).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn seek_reader_reads_at_offsets() {
        let reader = SeekReader::new(io::Cursor::new(vec![9u8, 8, 7, 6, 5]));
        assert_eq!(reader.size().unwrap(), 5);
        let mut buf = [0u8; 3];
        reader.read_exact_at(&mut buf, 1).unwrap();
        assert_eq!(buf, [8, 7, 6]);
        assert!(reader.read_exact_at(&mut buf, 4).is_err());
    }
}

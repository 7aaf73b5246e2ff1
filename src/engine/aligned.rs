//! Buffers that start on a cache line. oneDNN's bf16 products read and write whole 64-byte
//! lines: with operands that start 16 bytes into a line (where the allocator puts a large
//! `Vec`), W3's products ran 10-20% slower (Intel Sapphire Rapids VM, AMX, 1 and 2 threads).

use std::ops::{Deref, DerefMut};

/// Bytes of a cache line.
const LINE: usize = 64;

/// `len` values of `T`, zero-initialised, the first on a 64-byte boundary. Never resized.
pub struct Aligned<T> {
    raw: Vec<T>,
    start: usize,
    len: usize,
}

impl<T: Copy + Default> Aligned<T> {
    /// `len` default values (zeros).
    pub fn new(len: usize) -> Aligned<T> {
        let size = std::mem::size_of::<T>().max(1);
        let slack = LINE / size;
        let raw = vec![T::default(); len + slack];
        // The allocation never moves (the Vec is never resized), so the offset stays right.
        let misalign = raw.as_ptr() as usize % LINE;
        let start = if misalign == 0 { 0 } else { (LINE - misalign) / size };
        Aligned { raw, start, len }
    }

    /// A copy of `values`.
    pub fn from_slice(values: &[T]) -> Aligned<T> {
        let mut a = Aligned::new(values.len());
        a.copy_from_slice(values);
        a
    }
}

impl<T> Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.raw[self.start..self.start + self.len]
    }
}

impl<T> DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// Values on a cache line: this process's own, or a view of memory that outlives it and that
/// other processes may read too (the parameters, and their bf16 copy, that the ranks of one
/// node keep once, in their shared-memory window).
pub enum Flat<T = f32> {
    /// Owned by this buffer.
    Owned(Aligned<T>),
    /// `len` values at `ptr`, owned elsewhere.
    Shared {
        /// The first value.
        ptr: *mut T,
        /// The number of values.
        len: usize,
    },
}

impl<T> Flat<T> {
    /// A view of `len` values at `ptr`.
    ///
    /// # Safety
    /// `ptr` points to `len` initialised values that stay valid, and that no other code in
    /// this process accesses, while the view is used.
    pub unsafe fn shared(ptr: *mut T, len: usize) -> Flat<T> {
        Flat::Shared { ptr, len }
    }
}

impl<T> Deref for Flat<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Flat::Owned(a) => a,
            // SAFETY: the contract of Flat::shared.
            Flat::Shared { ptr, len } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

impl<T> DerefMut for Flat<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            Flat::Owned(a) => a,
            // SAFETY: the contract of Flat::shared.
            Flat::Shared { ptr, len } => unsafe { std::slice::from_raw_parts_mut(*ptr, *len) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_cache_line_with_the_asked_length() {
        for len in [0, 1, 7, 1000, 1 << 20] {
            let a = Aligned::<u16>::new(len);
            assert_eq!(a.len(), len);
            assert_eq!(a.as_ptr() as usize % LINE, 0, "len {len}");
            assert!(a.iter().all(|&v| v == 0));
            let f = Aligned::<f32>::new(len);
            assert_eq!((f.as_ptr() as usize % LINE, f.len()), (0, len));
        }
    }
}

//! A provided-buffer ring: receive buffers the kernel picks from, so an idle connection owns no
//! receive memory at all.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

/// Anonymous, page-aligned memory, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: an anonymous private mapping touches no existing memory; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned null"),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; nothing refers to it any more
        // (the ring that used it is unregistered or destroyed before this drops).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

pub(crate) struct BufRing {
    ring: Mapping,
    buffers: Mapping,
    entries: u16,
    buffer_bytes: usize,
    /// Our copy of the tail; published to the kernel with a Release store.
    tail: u16,
    /// Bit `id` set while the application holds buffer `id`: handed out by a completion, not yet
    /// recycled. The kernel owns every other buffer and may write it at any moment, so reading
    /// one, or recycling it (which would let two receives share it), is refused.
    held: Vec<u64>,
    held_count: usize,
}

impl BufRing {
    /// `entries` must be a power of two (kernel requirement), at most 32768.
    pub(crate) fn new(entries: u16, buffer_bytes: usize) -> io::Result<Self> {
        if !entries.is_power_of_two() || entries > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer ring entries must be a power of two no larger than 32768",
            ));
        }
        let ring = Mapping::new(entries as usize * std::mem::size_of::<BufRingEntry>())?;
        let buffers = Mapping::new(entries as usize * buffer_bytes)?;
        let mut br = BufRing {
            ring,
            buffers,
            entries,
            buffer_bytes,
            tail: 0,
            held: vec![0; (entries as usize).div_ceil(64)],
            held_count: 0,
        };
        for id in 0..entries {
            br.push(id);
        }
        br.publish();
        Ok(br)
    }

    pub(crate) fn ring_addr(&self) -> u64 {
        self.ring.ptr.as_ptr() as u64
    }

    pub(crate) fn entries(&self) -> u16 {
        self.entries
    }

    fn is_held(&self, id: u16) -> bool {
        self.held
            .get(id as usize / 64)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    fn set_held(&mut self, id: u16, held: bool) {
        let (word, bit) = (&mut self.held[id as usize / 64], 1u64 << (id % 64));
        if held {
            *word |= bit;
            self.held_count += 1;
        } else {
            *word &= !bit;
            self.held_count -= 1;
        }
    }

    /// The first `len` bytes of buffer `id`, which a completion handed out and which has not been
    /// recycled since.
    pub(crate) fn buffer(&self, id: u16, len: usize) -> &[u8] {
        assert!(
            id < self.entries && len <= self.buffer_bytes,
            "buffer {id}/{len} out of range"
        );
        assert!(
            self.is_held(id),
            "buffer {id} read but not held (already recycled, or never handed out): the kernel \
             may be writing it"
        );
        // SAFETY: the range is inside the buffers mapping (checked above); the kernel wrote it
        // before posting the completion that handed us `id` (held, checked above), and will not
        // write it again until we recycle it.
        unsafe {
            std::slice::from_raw_parts(
                self.buffers
                    .ptr
                    .as_ptr()
                    .add(id as usize * self.buffer_bytes),
                len,
            )
        }
    }

    /// A completion handed buffer `id` to the application.
    pub(crate) fn taken(&mut self, id: u16) {
        assert!(
            id < self.entries && !self.is_held(id),
            "the kernel handed out buffer {id}, which is out of range or already held"
        );
        self.set_held(id, true);
    }

    /// Gives `id` back to the kernel.
    pub(crate) fn recycle(&mut self, id: u16) {
        assert!(
            self.is_held(id),
            "buffer {id} recycled but not held (recycled twice, or never handed out): the kernel \
             owns it"
        );
        self.set_held(id, false);
        self.push(id);
        self.publish();
    }

    pub(crate) fn available(&self) -> usize {
        self.entries as usize - self.held_count
    }

    fn push(&mut self, id: u16) {
        let mask = self.entries - 1;
        let index = (self.tail & mask) as usize;
        // SAFETY: `index < entries`, so the entry lies inside the ring mapping. The kernel only
        // reads entries between its head and our published tail; this one is past the tail.
        let entry = unsafe { &mut *(self.ring.ptr.as_ptr() as *mut BufRingEntry).add(index) };
        entry.set_addr(self.buffers.ptr.as_ptr() as u64 + id as u64 * self.buffer_bytes as u64);
        entry.set_len(self.buffer_bytes as u32);
        entry.set_bid(id);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field overlays the first entry's reserved u16 at a fixed offset; the
        // mapping is page-aligned, so the u16 is aligned. Release orders the entry writes above
        // before the kernel can observe the new tail (liburing#1039).
        unsafe {
            let tail = BufRingEntry::tail(self.ring.ptr.as_ptr() as *const BufRingEntry);
            (*(tail as *const AtomicU16)).store(self.tail, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring whose buffer 1 a completion handed out; 0, 2 and 3 are the kernel's.
    fn one_held() -> BufRing {
        let mut r = BufRing::new(4, 16).unwrap();
        r.taken(1);
        r
    }

    #[test]
    fn held_buffers_are_read_and_recycled_once() {
        let mut r = one_held();
        assert_eq!(r.available(), 3);
        assert_eq!(r.buffer(1, 16).len(), 16);
        r.recycle(1);
        assert_eq!(r.available(), 4);
        r.taken(1);
        r.recycle(1);
    }

    #[test]
    #[should_panic(expected = "buffer 1 recycled but not held")]
    fn recycling_twice_panics() {
        let mut r = one_held();
        r.recycle(1);
        r.recycle(1);
    }

    #[test]
    #[should_panic(expected = "buffer 2 recycled but not held")]
    fn recycling_a_kernel_owned_buffer_panics() {
        one_held().recycle(2);
    }

    #[test]
    #[should_panic(expected = "buffer 0 read but not held")]
    fn reading_a_kernel_owned_buffer_panics() {
        one_held().buffer(0, 1);
    }

    #[test]
    #[should_panic(expected = "buffer 1 read but not held")]
    fn reading_a_recycled_buffer_panics() {
        let mut r = one_held();
        r.recycle(1);
        r.buffer(1, 1);
    }

    #[test]
    #[should_panic(expected = "already held")]
    fn a_buffer_handed_out_twice_panics() {
        one_held().taken(1);
    }
}

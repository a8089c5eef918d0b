//! The guest allocator: a bump allocator over a fixed static arena.
//!
//! Every request runs in a fresh instance (at most its `on-request` and
//! `on-response` share one), so nothing lives long: a bump
//! pointer that never frees (except the most recent allocation, which makes
//! `Vec` / `String` growth free) is both the fastest and the smallest
//! allocator. The 32 KiB arena lives in `.bss`, inside the module's initial
//! memory, so the common case never executes `memory.grow`. When the arena is
//! exhausted the allocator falls back to `memory.grow` (big request heads
//! still work, just slower); when the host refuses to grow, allocation returns
//! null, which ends in a trap.
//!
//! The bookkeeping ([`Bump`]) is plain address arithmetic over a [`Source`] of
//! memory so that it is unit-tested natively; only the wasm32 glue touches real
//! memory.
// Compiled in (feature `embedded`) the guest uses std's allocator: only the tests use this.
#![cfg_attr(feature = "embedded", allow(dead_code))]

#![cfg_attr(not(all(target_arch = "wasm32", feature = "allocator")), allow(dead_code))]

/// Size of the static arena.
pub const ARENA_SIZE: usize = 32 * 1024;

/// Where more memory comes from when the current chunk is exhausted.
pub(crate) trait Source {
    /// A fresh region of at least `min` bytes, as `(start, end)` addresses,
    /// or `None` when no more memory can be had.
    fn more(&mut self, min: usize) -> Option<(usize, usize)>;
}

/// Bump-allocation state: the free tail `[next, end)` of the current chunk
/// and the start of the most recent allocation.
pub(crate) struct Bump {
    next: usize,
    end: usize,
    last: usize,
}

const NONE: usize = usize::MAX;

#[inline]
fn fit(next: usize, end: usize, size: usize, align: usize) -> Option<usize> {
    let start = next.checked_add(align - 1)? & !(align - 1);
    if start.checked_add(size)? <= end {
        Some(start)
    } else {
        None
    }
}

impl Bump {
    pub(crate) const fn new() -> Self {
        // An empty chunk: the first allocation asks the source, which hands
        // out the static arena first.
        Bump {
            next: 0,
            end: 0,
            last: NONE,
        }
    }

    /// Adopt a region from the source: extend the current chunk when the
    /// region continues it, else start a new chunk there.
    #[inline]
    fn adopt(&mut self, (start, end): (usize, usize)) {
        if start != self.end {
            self.next = start;
            self.last = NONE;
        }
        self.end = end;
    }

    /// Address of a new block of `size` bytes aligned to `align` (a power of
    /// two), or 0 when out of memory.
    #[inline]
    pub(crate) fn alloc(&mut self, size: usize, align: usize, src: &mut impl Source) -> usize {
        loop {
            if let Some(start) = fit(self.next, self.end, size, align) {
                self.last = start;
                self.next = start + size;
                return start;
            }
            match size.checked_add(align - 1).and_then(|min| src.more(min)) {
                Some(region) => self.adopt(region),
                None => return 0,
            }
        }
    }

    /// Free a block: only the most recent allocation is actually reclaimed.
    #[inline]
    pub(crate) fn dealloc(&mut self, ptr: usize, size: usize) {
        if ptr == self.last && ptr + size == self.next {
            self.next = ptr;
            self.last = NONE;
        }
    }

    /// Resize a block. Returns the new address (0 when out of memory) and
    /// whether the contents must be copied there from `ptr`.
    pub(crate) fn realloc(
        &mut self,
        ptr: usize,
        old: usize,
        align: usize,
        new: usize,
        src: &mut impl Source,
    ) -> (usize, bool) {
        if ptr == self.last && ptr + old == self.next {
            // The most recent allocation: grow or shrink in place.
            if let Some(end) = ptr.checked_add(new) {
                if end <= self.end {
                    self.next = end;
                    return (ptr, false);
                }
                // Try to extend the chunk right behind it. If the new region
                // does not continue the chunk, `alloc` below uses it (and
                // asks for more, contiguously, if it is still too small).
                let Some(region) = src.more(end - self.end) else {
                    return (0, false);
                };
                if region.0 == self.end {
                    self.end = region.1;
                    self.next = end;
                    return (ptr, false);
                }
                self.adopt(region);
            }
        } else if new <= old {
            return (ptr, false);
        }
        (self.alloc(new, align, src), true)
    }
}

#[cfg(all(target_arch = "wasm32", feature = "allocator", not(feature = "embedded")))]
mod wasm {
    use super::{ARENA_SIZE, Bump, Source};
    use core::alloc::{GlobalAlloc, Layout};
    use core::cell::UnsafeCell;
    use core::ptr;

    /// The arena, alone in its own all-zero static so that it lands in
    /// `.bss`: inside the initial memory, but no data segment to copy.
    #[repr(C, align(16))]
    struct Arena(UnsafeCell<[u8; ARENA_SIZE]>);

    struct State {
        bump: Bump,
        arena_given: bool,
    }

    struct Global<T>(UnsafeCell<T>);

    // SAFETY: wasm32 guests are single-threaded and never re-entered: the
    // host calls one hook at a time in an instance.
    unsafe impl Sync for Arena {}
    unsafe impl<T> Sync for Global<T> {}

    static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_SIZE]));
    static STATE: Global<State> = Global(UnsafeCell::new(State {
        bump: Bump::new(),
        arena_given: false,
    }));

    struct Pages<'a> {
        arena_given: &'a mut bool,
    }

    impl Source for Pages<'_> {
        #[inline]
        fn more(&mut self, min: usize) -> Option<(usize, usize)> {
            if !*self.arena_given {
                *self.arena_given = true;
                let start = ARENA.0.get() as usize;
                return Some((start, start + ARENA_SIZE));
            }
            grow(min)
        }
    }

    #[cold]
    fn grow(min: usize) -> Option<(usize, usize)> {
        let pages = min.div_ceil(65536);
        let old = core::arch::wasm32::memory_grow(0, pages);
        if old == usize::MAX {
            return None;
        }
        Some((old * 65536, (old + pages) * 65536))
    }

    #[inline]
    fn with<R>(f: impl FnOnce(&mut Bump, &mut Pages<'_>) -> R) -> R {
        // SAFETY: single-threaded, not re-entrant (see `Global`).
        let state = unsafe { &mut *STATE.0.get() };
        let mut pages = Pages {
            arena_given: &mut state.arena_given,
        };
        f(&mut state.bump, &mut pages)
    }

    #[inline]
    pub(crate) unsafe fn alloc(size: usize, align: usize) -> *mut u8 {
        with(|b, s| b.alloc(size, align, s)) as *mut u8
    }

    #[inline]
    pub(crate) unsafe fn dealloc(ptr: *mut u8, size: usize) {
        with(|b, _| b.dealloc(ptr as usize, size))
    }

    #[inline]
    pub(crate) unsafe fn realloc(ptr: *mut u8, old: usize, align: usize, new: usize) -> *mut u8 {
        let (to, copy) = with(|b, s| b.realloc(ptr as usize, old, align, new, s));
        let to = to as *mut u8;
        if copy && !to.is_null() {
            // SAFETY: `to` is a fresh block past every live one, so the two
            // do not overlap.
            unsafe { ptr::copy_nonoverlapping(ptr, to, old.min(new)) };
        }
        to
    }

    struct BumpAlloc;

    unsafe impl GlobalAlloc for BumpAlloc {
        #[inline]
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            unsafe { alloc(layout.size(), layout.align()) }
        }

        #[inline]
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { dealloc(ptr, layout.size()) }
        }

        #[inline]
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            unsafe { realloc(ptr, layout.size(), layout.align(), new_size) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: BumpAlloc = BumpAlloc;

    /// The canonical ABI's allocation entry point (the host uses it to pass
    /// lists and strings in). wit-bindgen only provides one for wasip1; on
    /// wasip2 it normally comes from wasi-libc, which a no_std guest does
    /// not link.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn cabi_realloc(
        old_ptr: *mut u8,
        old_len: usize,
        align: usize,
        new_len: usize,
    ) -> *mut u8 {
        let ptr = unsafe {
            if old_len == 0 {
                if new_len == 0 {
                    return align as *mut u8;
                }
                alloc(new_len, align)
            } else {
                realloc(old_ptr, old_len, align, new_len)
            }
        };
        if ptr.is_null() {
            core::arch::wasm32::unreachable();
        }
        ptr
    }

    // `memcmp` / `bcmp` (string comparisons) come from the toolchain's
    // wasi-libc `libc.a`: on wasip2 compiler-builtins leaves them to libc. Only
    // the referenced members are linked; none of them imports anything.
    #[link(name = "c")]
    unsafe extern "C" {}

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
        core::arch::wasm32::unreachable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake linear memory: an arena at 1024, then pages from 65536 on.
    struct Fake {
        arena_given: bool,
        pages: usize,
        max_pages: usize,
        grows: usize,
    }

    impl Fake {
        fn new(max_pages: usize) -> Self {
            Fake {
                arena_given: false,
                pages: 1,
                max_pages,
                grows: 0,
            }
        }
    }

    impl Source for Fake {
        fn more(&mut self, min: usize) -> Option<(usize, usize)> {
            if !self.arena_given {
                self.arena_given = true;
                return Some((1024, 1024 + ARENA_SIZE));
            }
            let n = min.div_ceil(65536);
            if self.pages + n > self.max_pages {
                return None;
            }
            self.grows += 1;
            let old = self.pages;
            self.pages += n;
            Some((old * 65536, self.pages * 65536))
        }
    }

    #[test]
    fn bumps_within_the_arena_and_aligns() {
        let (mut b, mut s) = (Bump::new(), Fake::new(4));
        assert_eq!(b.alloc(3, 1, &mut s), 1024);
        assert_eq!(b.alloc(8, 8, &mut s), 1032);
        assert_eq!(b.alloc(1, 1, &mut s), 1040);
        assert_eq!(b.alloc(4, 4, &mut s), 1044);
        assert_eq!(s.grows, 0);
    }

    #[test]
    fn frees_and_grows_the_last_allocation_in_place() {
        let (mut b, mut s) = (Bump::new(), Fake::new(4));
        let a = b.alloc(16, 8, &mut s);
        let c = b.alloc(16, 8, &mut s);
        assert_eq!(b.realloc(c, 16, 8, 100, &mut s), (c, false));
        assert_eq!(b.realloc(c, 100, 8, 10, &mut s), (c, false));
        // Not the last one: growing moves it.
        let (moved, copy) = b.realloc(a, 16, 8, 32, &mut s);
        assert!(copy && moved >= c + 10);
        b.dealloc(moved, 32);
        assert_eq!(b.alloc(8, 8, &mut s), moved);
        // Freeing something that is not the last one does nothing.
        b.dealloc(a, 16);
        assert_eq!(b.alloc(1, 1, &mut s), moved + 8);
    }

    #[test]
    fn falls_back_to_pages_then_fails() {
        let (mut b, mut s) = (Bump::new(), Fake::new(3));
        let a = b.alloc(ARENA_SIZE - 8, 8, &mut s);
        assert_eq!(a, 1024);
        let big = b.alloc(40_000, 8, &mut s);
        assert_eq!((big, s.grows), (65536, 1));
        // Growing the last allocation past its page extends contiguously.
        assert_eq!(b.realloc(big, 40_000, 8, 100_000, &mut s), (big, false));
        assert_eq!(s.pages, 3);
        // Memory cap reached: null.
        assert_eq!(b.alloc(65536, 8, &mut s), 0);
        assert_eq!(b.realloc(big, 100_000, 8, 200_000, &mut s), (0, false));
    }

    #[test]
    fn a_first_allocation_bigger_than_the_arena_still_works() {
        let (mut b, mut s) = (Bump::new(), Fake::new(4));
        assert_eq!(b.alloc(ARENA_SIZE + 1, 1, &mut s), 65536);
        assert_eq!(b.alloc(1, 1, &mut s), 65536 + ARENA_SIZE + 1);
    }
}

//! Stack painting: the stack below the current frame is filled with a pattern at boot, and the
//! lowest word no longer holding it after a restore is the stack's high-water mark.
//!
//! flip-link places the stack at the bottom of RAM, growing down towards `ORIGIN(RAM)`: the
//! painted range is `[ORIGIN(RAM), SP - margin)`. Overflowing it faults (flip-link), so the mark
//! never has to be read past the bottom.

/// Start of RAM (memory.x): the stack's lowest address under flip-link.
const RAM_ORIGIN: usize = 0x2000_0000;
/// Bytes left unpainted below the painting function's own frame.
const MARGIN: usize = 256;
const PATTERN: u32 = 0xDEAD_BEEF;

unsafe extern "C" {
    /// Top of the stack (cortex-m-rt's symbol, moved by flip-link below .data and .bss).
    static _stack_start: u32;
}

/// The top of the stack: its highest address plus one.
pub fn top() -> usize {
    // Only the symbol's address is taken; it is never read.
    core::ptr::addr_of!(_stack_start) as usize
}

/// Paints the stack from the bottom of RAM up to `MARGIN` bytes below the current frame.
#[inline(never)]
pub fn paint() {
    let sp = cortex_m::register::msp::read() as usize;
    let end = sp.saturating_sub(MARGIN) & !3;
    let mut p = RAM_ORIGIN;
    while p < end {
        // Safety: `[RAM_ORIGIN, end)` is stack memory below the current frame (flip-link puts
        // the stack at the bottom of RAM), unused by any live frame, word-aligned.
        unsafe { (p as *mut u32).write_volatile(PATTERN) };
        p += 4;
    }
}

/// Bytes of stack used at the deepest point since [`paint`]: the distance from the top of the
/// stack to the lowest word that no longer holds the pattern.
pub fn high_water() -> usize {
    let mut p = RAM_ORIGIN;
    let top = top();
    while p < top {
        // Safety: `[RAM_ORIGIN, top)` is the stack, readable RAM, word-aligned.
        if unsafe { (p as *const u32).read_volatile() } != PATTERN {
            break;
        }
        p += 4;
    }
    top.saturating_sub(p)
}

/// Bytes of stack available in all.
pub fn size() -> usize {
    top().saturating_sub(RAM_ORIGIN)
}

//! The mps2-an385's UART0 (an Arm CMSDK APB UART at [`UART0`]), polled: QEMU connects it to
//! its first `-serial` (a TCP socket on loopback for the device link). The receive register
//! holds one byte and QEMU's character device waits while it is full, so polling loses nothing.

use volatile_register::{RO, RW};

/// UART0's registers.
const UART0: usize = 0x4000_4000;

/// `STATE`: the transmit register is full.
const TX_FULL: u32 = 1 << 0;
/// `STATE`: the receive register holds a byte.
const RX_FULL: u32 = 1 << 1;
/// `CTRL`: transmitter and receiver enabled.
const TX_RX_ENABLE: u32 = 0b11;
/// The smallest baud divider the UART accepts (QEMU ignores the rate itself).
const BAUD_DIV: u32 = 16;

#[repr(C)]
struct Registers {
    data: RW<u32>,
    state: RW<u32>,
    ctrl: RW<u32>,
    _int_status: RO<u32>,
    bauddiv: RW<u32>,
}

/// UART0, enabled.
pub struct Uart {
    regs: &'static Registers,
}

impl Uart {
    /// Enables UART0. Call once per boot ([`crate::storage::take`] guards the board the same
    /// way; this is only called from the link's entry).
    pub fn take() -> Self {
        // Safety: UART0's registers are at this fixed address on the mps2-an385 (its
        // application note and QEMU's model agree); nothing else in the firmware touches them,
        // and `RW`/`RO` make every access volatile.
        let regs: &'static Registers = unsafe { &*(UART0 as *const Registers) };
        // Safety: plain register writes to a peripheral this module alone drives.
        unsafe {
            regs.bauddiv.write(BAUD_DIV);
            regs.ctrl.write(TX_RX_ENABLE);
        }
        Uart { regs }
    }

    /// Sends `bytes`, waiting while the transmit register is full.
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            while self.regs.state.read() & TX_FULL != 0 {}
            // Safety: a write of the data register, the UART's transmit.
            unsafe { self.regs.data.write(u32::from(*b)) };
        }
    }

    /// A received byte, if one is waiting.
    pub fn read(&mut self) -> Option<u8> {
        if self.regs.state.read() & RX_FULL == 0 {
            return None;
        }
        Some((self.regs.data.read() & 0xFF) as u8)
    }
}

//! An in-memory "cable" between two embassy-net stacks: two bounded queues
//! of IP packets (`Medium::Ip`: no Ethernet header, no ARP), one per
//! direction, and an [`embassy_net_driver::Driver`] for each end.
//!
//! Nothing is lost: a full queue makes `transmit` report "not ready" (the
//! stack keeps the packet and tries again on the next poll), like a NIC
//! whose transmit ring is full. `receive` hands out a packet only when the
//! reply direction has room too, so the transmit token that comes with it
//! can always be used.

use core::cell::RefCell;
use core::task::Context;

use embassy_net_driver::{Capabilities, Driver, HardwareAddress, LinkState, RxToken, TxToken};

/// Largest IP packet (the usual Ethernet MTU).
pub const MTU: usize = 1500;
/// Packets in flight per direction.
pub const DEPTH: usize = 4;

/// A ring of [`DEPTH`] packets.
pub struct Queue {
    frames: [[u8; MTU]; DEPTH],
    lens: [usize; DEPTH],
    head: usize,
    count: usize,
    /// Where a packet goes when the ring is full after all (never, given
    /// the checks in [`Port`]; counted in `dropped`).
    spare: [u8; MTU],
    /// Packets dropped because the ring was full.
    pub dropped: u32,
    /// Packets carried so far.
    pub carried: u32,
    /// Bytes carried so far.
    pub bytes: u32,
}

impl Queue {
    const fn new() -> Self {
        Queue {
            frames: [[0; MTU]; DEPTH],
            lens: [0; DEPTH],
            head: 0,
            count: 0,
            spare: [0; MTU],
            dropped: 0,
            carried: 0,
            bytes: 0,
        }
    }

    fn is_full(&self) -> bool {
        self.count == DEPTH
    }

    /// Appends a packet of `len` bytes written by `f`.
    fn push_with<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        let len = len.min(MTU);
        if self.is_full() {
            self.dropped = self.dropped.wrapping_add(1);
            return f(&mut self.spare[..len]);
        }
        let slot = (self.head + self.count) % DEPTH;
        self.lens[slot] = len;
        self.count += 1;
        self.carried = self.carried.wrapping_add(1);
        self.bytes = self.bytes.wrapping_add(len as u32);
        f(&mut self.frames[slot][..len])
    }

    /// Removes the oldest packet, handing it to `f` (an empty one if there
    /// is none, which the checks in [`Port`] rule out).
    fn pop_with<R>(&mut self, f: impl FnOnce(&mut [u8]) -> R) -> R {
        if self.count == 0 {
            return f(&mut []);
        }
        let slot = self.head;
        self.head = (self.head + 1) % DEPTH;
        self.count -= 1;
        let len = self.lens[slot];
        f(&mut self.frames[slot][..len])
    }
}

/// Both directions.
pub struct Cable {
    a_to_b: RefCell<Queue>,
    b_to_a: RefCell<Queue>,
}

impl Cable {
    /// An empty cable (const: it lives in `.bss`).
    pub const fn new() -> Self {
        Cable {
            a_to_b: RefCell::new(Queue::new()),
            b_to_a: RefCell::new(Queue::new()),
        }
    }

    /// The two ends: `(a, b)`.
    pub fn ends(&self) -> (Port<'_>, Port<'_>) {
        (
            Port {
                rx: &self.b_to_a,
                tx: &self.a_to_b,
            },
            Port {
                rx: &self.a_to_b,
                tx: &self.b_to_a,
            },
        )
    }

    /// Packets, bytes and drops `(a to b, b to a)`.
    pub fn carried(&self) -> ([u32; 3], [u32; 3]) {
        let ab = self.a_to_b.borrow();
        let ba = self.b_to_a.borrow();
        (
            [ab.carried, ab.bytes, ab.dropped],
            [ba.carried, ba.bytes, ba.dropped],
        )
    }
}

/// One end of the cable: receives from one queue, transmits into the other.
///
/// The queues are `RefCell`s borrowed only inside one call here or one
/// token's `consume`; a receive token and a transmit token always hold
/// different queues, and everything runs on one thread, so a borrow never
/// overlaps another of the same queue.
pub struct Port<'a> {
    rx: &'a RefCell<Queue>,
    tx: &'a RefCell<Queue>,
}

/// A received packet.
pub struct Rx<'a>(&'a RefCell<Queue>);
/// Room for one packet.
pub struct Tx<'a>(&'a RefCell<Queue>);

impl RxToken for Rx<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        self.0.borrow_mut().pop_with(f)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        self.0.borrow_mut().push_with(len, f)
    }
}

impl Driver for Port<'_> {
    type RxToken<'b>
        = Rx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = Tx<'b>
    where
        Self: 'b;

    fn receive(&mut self, _cx: &mut Context) -> Option<(Rx<'_>, Tx<'_>)> {
        let ready = self.rx.borrow().count > 0 && !self.tx.borrow().is_full();
        ready.then_some((Rx(self.rx), Tx(self.tx)))
    }

    fn transmit(&mut self, _cx: &mut Context) -> Option<Tx<'_>> {
        (!self.tx.borrow().is_full()).then_some(Tx(self.tx))
    }

    fn link_state(&mut self, _cx: &mut Context) -> LinkState {
        LinkState::Up
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::default();
        c.max_transmission_unit = MTU;
        c.max_burst_size = Some(DEPTH);
        c
    }

    fn hardware_address(&self) -> HardwareAddress {
        HardwareAddress::Ip
    }
}

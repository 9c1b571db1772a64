//! The 64-bit tag every submission carries back in its completion.

/// Which kind of operation a completion belongs to.
///
/// These are I/O operations, not broadcasting concepts: the ring knows sockets, not subscribers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Shutdown = 4,
    Close = 5,
    Cancel = 6,
    Doorbell = 7,
}

impl Op {
    pub const ALL: [Op; 7] = [
        Op::Accept,
        Op::Recv,
        Op::Send,
        Op::Shutdown,
        Op::Close,
        Op::Cancel,
        Op::Doorbell,
    ];

    fn from_u8(v: u8) -> Option<Op> {
        Op::ALL.into_iter().find(|op| *op as u8 == v)
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::Accept => "accept",
            Op::Recv => "recv",
            Op::Send => "send",
            Op::Shutdown => "shutdown",
            Op::Close => "close",
            Op::Cancel => "cancel",
            Op::Doorbell => "doorbell",
        }
    }
}

/// `user_data` of a submission: which slot, which incarnation of that slot, which operation.
///
/// Layout (bit 63 … bit 0):
///
/// ```text
///  63      56 55                    32 31                                0
/// +----------+------------------------+-----------------------------------+
/// |    op    |  generation (24 bits)  |            slot index             |
/// +----------+------------------------+-----------------------------------+
/// ```
///
/// The generation is bumped every time a slot is freed, so a completion that arrives after its
/// connection was freed and the slot reused carries an old generation and is dropped (and
/// counted) instead of being applied to the new connection. 24 bits wrap after 16 M reuses of
/// one slot; a completion would have to stay in flight across all of them to be misapplied.
/// The value 0 is never produced (op is never 0), so a zeroed user_data is always a bug.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserData(u64);

impl UserData {
    pub const GENERATION_BITS: u32 = 24;
    pub const GENERATION_MASK: u32 = (1 << Self::GENERATION_BITS) - 1;

    /// `generation` is reduced modulo 2^24.
    pub const fn new(slot: u32, generation: u32, op: Op) -> Self {
        UserData(
            (op as u64) << 56 | ((generation & Self::GENERATION_MASK) as u64) << 32 | slot as u64,
        )
    }

    pub const fn slot(self) -> u32 {
        self.0 as u32
    }

    pub const fn generation(self) -> u32 {
        ((self.0 >> 32) as u32) & Self::GENERATION_MASK
    }

    /// `None` for a value this crate did not build: a bug, or memory corruption.
    pub fn op(self) -> Option<Op> {
        Op::from_u8((self.0 >> 56) as u8)
    }

    pub const fn to_u64(self) -> u64 {
        self.0
    }

    pub const fn from_u64(raw: u64) -> Self {
        UserData(raw)
    }

    /// The generation that follows `generation` (wrapping within 24 bits).
    pub const fn next_generation(generation: u32) -> u32 {
        (generation + 1) & Self::GENERATION_MASK
    }
}

impl std::fmt::Debug for UserData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "UserData(slot {}, gen {}, {:?})",
            self.slot(),
            self.generation(),
            self.op()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_field() {
        for op in Op::ALL {
            for (slot, generation) in [
                (0, 0),
                (1, 1),
                (u32::MAX, UserData::GENERATION_MASK),
                (12345, 0xABCDE),
            ] {
                let ud = UserData::new(slot, generation, op);
                assert_eq!(ud.slot(), slot);
                assert_eq!(ud.generation(), generation);
                assert_eq!(ud.op(), Some(op));
                assert_eq!(UserData::from_u64(ud.to_u64()), ud);
                assert_ne!(ud.to_u64(), 0);
            }
        }
    }

    #[test]
    fn generation_wraps_within_its_bits_without_touching_neighbours() {
        let ud = UserData::new(7, UserData::GENERATION_MASK + 1, Op::Send);
        assert_eq!(ud.generation(), 0);
        assert_eq!(ud.slot(), 7);
        assert_eq!(ud.op(), Some(Op::Send));
        assert_eq!(UserData::next_generation(UserData::GENERATION_MASK), 0);
        assert_eq!(UserData::next_generation(5), 6);
    }

    #[test]
    fn unknown_op_is_none() {
        assert_eq!(UserData::from_u64(0).op(), None);
        assert_eq!(UserData::from_u64(0xFF << 56).op(), None);
    }
}

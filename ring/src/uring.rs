//! The io_uring driver.

use std::fmt;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};

use crate::buf_ring::BufRing;
use crate::{Completion, Doorbell, Driver, DriverStats, Op, UserData};

/// Buffer group id of the one provided-buffer ring each driver registers.
const BUFFER_GROUP: u16 = 0;

/// The doorbell read is tagged with a slot no connection table can hand out.
const DOORBELL_USER_DATA: UserData = UserData::new(u32::MAX, 0, Op::Doorbell);

/// First and longest pause after the kernel refused a flush with EAGAIN (short of memory).
const FLUSH_BACKOFF_MIN: Duration = Duration::from_micros(50);
const FLUSH_BACKOFF_MAX: Duration = Duration::from_millis(5);

#[derive(Clone, Copy, Debug)]
pub struct RingConfig {
    /// Submission queue entries (rounded up to a power of two by the kernel).
    pub sq_entries: u32,
    /// Completion queue entries; make it large, overflow ends multishot operations.
    pub cq_entries: u32,
    /// Provided receive buffers (a power of two).
    pub recv_buffers: u16,
    /// Size of each provided receive buffer.
    pub recv_buffer_bytes: usize,
}

/// What the kernel granted.
#[derive(Clone, Debug, Default)]
pub struct RingFeatures {
    pub single_issuer: bool,
    pub defer_taskrun: bool,
    pub kernel_release: String,
}

impl fmt::Display for RingFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kernel {}, multishot accept+recv, provided buffer ring, single_issuer={}, defer_taskrun={}",
            self.kernel_release, self.single_issuer, self.defer_taskrun
        )
    }
}

/// io_uring could not be used. `Display` names the cause and the fix.
#[derive(Debug)]
pub struct SetupError {
    /// What was being attempted ("io_uring_setup", "probe", …).
    pub step: &'static str,
    pub error: io::Error,
    /// Extra detail, e.g. the missing opcode.
    pub detail: String,
}

impl SetupError {
    fn new(step: &'static str, error: io::Error) -> Self {
        SetupError {
            step,
            error,
            detail: String::new(),
        }
    }

    /// The fix for this cause, in one sentence.
    pub fn advice(&self) -> &'static str {
        if self.step == QUEUE_SIZE_CHECK {
            // Also EINVAL, but the request's fault, not the kernel's age.
            return "the kernel accepts 1 to 32768 submission entries (IORING_MAX_ENTRIES) and up \
                    to 65536 completion entries, no fewer than the submission entries: lower \
                    RINGFAN_RING_ENTRIES";
        }
        match self.error.raw_os_error() {
            Some(libc::EPERM) => {
                "io_uring is forbidden here: either the sysctl kernel.io_uring_disabled is 1 or 2 \
                 (set it to 0: sysctl -w kernel.io_uring_disabled=0), or a container seccomp profile \
                 blocks it (Docker Engine >= 25 and containerd 2 do by default: run with a profile \
                 that allows io_uring_setup, io_uring_enter and io_uring_register)"
            }
            Some(libc::ENOSYS) => {
                "this kernel or sandbox has no io_uring (gVisor, or a kernel built without \
                 CONFIG_IO_URING): run on Linux >= 6.0 with io_uring enabled"
            }
            Some(libc::EINVAL) => {
                "the kernel is too old for the io_uring features ringfan needs (multishot accept \
                 and recv, provided buffer rings): run on Linux >= 6.0"
            }
            Some(libc::ENOMEM) => {
                "the kernel could not allocate or lock memory for the ring: raise the locked-memory \
                 limit (ulimit -l, or LimitMEMLOCK= in a systemd unit) or lower RINGFAN_RING_ENTRIES / \
                 RINGFAN_RECV_BUFFERS"
            }
            _ => "unexpected error while setting up io_uring",
        }
    }
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "io_uring unavailable: {} failed: {}",
            self.step, self.error
        )?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        write!(f, ". {}", self.advice())
    }
}

impl std::error::Error for SetupError {}

fn kernel_release() -> String {
    // SAFETY: utsname is plain data; uname fills it; release is NUL-terminated by the kernel.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return "unknown".into();
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

/// (major, minor) of a release string like "6.18.44-foo".
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// The step name of a `SetupError` for queue sizes io_uring_setup would refuse with EINVAL.
const QUEUE_SIZE_CHECK: &str = "queue size check";
/// io_uring_setup's limits (IORING_MAX_ENTRIES, IORING_MAX_CQ_ENTRIES) without IORING_SETUP_CLAMP.
const SQ_ENTRIES_MAX: u32 = 32768;
const CQ_ENTRIES_MAX: u32 = 2 * SQ_ENTRIES_MAX;

/// Refuses the sizes io_uring_setup would, before asking it: its EINVAL would otherwise read as
/// a kernel too old for the flags we ask for.
fn check_queue_sizes(config: &RingConfig) -> Result<(), SetupError> {
    let (sq, cq) = (config.sq_entries, config.cq_entries);
    // The kernel rounds both up to powers of two, then requires cq >= sq.
    let fits = (1..=SQ_ENTRIES_MAX).contains(&sq)
        && (1..=CQ_ENTRIES_MAX).contains(&cq)
        && cq.next_power_of_two() >= sq.next_power_of_two();
    if fits {
        return Ok(());
    }
    let mut e = SetupError::new(QUEUE_SIZE_CHECK, io::Error::from_raw_os_error(libc::EINVAL));
    e.detail = format!("{sq} submission and {cq} completion entries requested");
    Err(e)
}

fn build_ring(config: &RingConfig) -> Result<(IoUring, RingFeatures), SetupError> {
    check_queue_sizes(config)?;
    let mut features = RingFeatures {
        kernel_release: kernel_release(),
        ..Default::default()
    };
    if let Some(v) = kernel_version(&features.kernel_release) {
        if v < (6, 0) {
            let mut e = SetupError::new(
                "kernel version check",
                io::Error::from_raw_os_error(libc::EINVAL),
            );
            e.detail = format!("kernel {} lacks multishot recv", features.kernel_release);
            return Err(e);
        }
    }
    // DEFER_TASKRUN (6.1+) runs completion work only when we enter the ring, on our own thread:
    // fewer interrupts of the loop. It requires SINGLE_ISSUER. Fall back to a plain ring if the
    // kernel refuses either.
    let attempt = IoUring::builder()
        .setup_cqsize(config.cq_entries)
        .setup_submit_all()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(config.sq_entries);
    let ring = match attempt {
        Ok(ring) => {
            features.single_issuer = true;
            features.defer_taskrun = true;
            ring
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder()
            .setup_cqsize(config.cq_entries)
            .build(config.sq_entries)
            .map_err(|e| SetupError::new("io_uring_setup", e))?,
        Err(e) => return Err(SetupError::new("io_uring_setup", e)),
    };
    if !ring.params().is_feature_nodrop() || !ring.params().is_feature_ext_arg() {
        let mut e = SetupError::new("feature check", io::Error::from_raw_os_error(libc::EINVAL));
        e.detail = "ring lacks IORING_FEAT_NODROP or IORING_FEAT_EXT_ARG".into();
        return Err(e);
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| SetupError::new("io_uring_register(PROBE)", e))?;
    let needed: [(&str, u8); 8] = [
        ("ACCEPT", opcode::AcceptMulti::CODE),
        ("RECV", opcode::RecvMulti::CODE),
        ("SENDMSG", opcode::SendMsg::CODE),
        ("SHUTDOWN", opcode::Shutdown::CODE),
        ("CLOSE", opcode::Close::CODE),
        ("ASYNC_CANCEL", opcode::AsyncCancel2::CODE),
        ("READ", opcode::Read::CODE),
        ("NOP", opcode::Nop::CODE),
    ];
    for (name, code) in needed {
        if !probe.is_supported(code) {
            let mut e = SetupError::new("opcode probe", io::Error::from_raw_os_error(libc::EINVAL));
            e.detail = format!("IORING_OP_{name} not supported");
            return Err(e);
        }
    }
    Ok((ring, features))
}

/// Appends every posted completion to `out`, in order; true if the doorbell's read was among them
/// (the caller re-arms it). Pushes nothing, so it cannot nest.
fn drain_completions(ring: &mut IoUring, bufs: &mut BufRing, out: &mut Vec<Completion>) -> bool {
    let mut doorbell_fired = false;
    for cqe in ring.completion() {
        let flags = cqe.flags();
        let user_data = UserData::from_u64(cqe.user_data());
        let buffer = cqueue::buffer_select(flags);
        if let Some(id) = buffer {
            bufs.taken(id);
        }
        if user_data == DOORBELL_USER_DATA {
            doorbell_fired = true;
        }
        out.push(Completion {
            user_data,
            result: cqe.result(),
            more: cqueue::more(flags),
            buffer,
        });
    }
    doorbell_fired
}

/// Checks that io_uring and every opcode and feature the server needs work here, by building a
/// small ring the way workers do and registering a buffer ring on it.
pub fn probe() -> Result<RingFeatures, SetupError> {
    let config = RingConfig {
        sq_entries: 8,
        cq_entries: 16,
        recv_buffers: 2,
        recv_buffer_bytes: 64,
    };
    Uring::new(&config).map(|u| u.features.clone())
}

/// One io_uring, its provided-buffer ring and its doorbell. Build it on the thread that uses it.
pub struct Uring {
    /// Dropped first, explicitly, by `Drop for Uring`: see there.
    ring: ManuallyDrop<IoUring>,
    bufs: BufRing,
    doorbell: Doorbell,
    /// Where the armed doorbell read writes the eventfd counter. Leaked on purpose: the kernel
    /// cancels the read asynchronously when the ring is torn down, so the 8 bytes must outlive
    /// `self`.
    doorbell_buf: &'static mut u64,
    features: RingFeatures,
    /// Completions reaped while flushing a full submission queue, returned first next time.
    reaped: Vec<Completion>,
    stats: DriverStats,
    overflow_seen: bool,
    /// Called instead of a full queue's flush while it returns an errno: the errors the kernel
    /// gives under memory pressure or overflow, which a test cannot otherwise cause.
    #[cfg(test)]
    flush_fault: Option<FlushFault>,
}

#[cfg(test)]
type FlushFault = Box<dyn FnMut(&IoUring) -> Option<i32>>;

impl Uring {
    pub fn new(config: &RingConfig) -> Result<Self, SetupError> {
        let (ring, features) = build_ring(config)?;
        let bufs = BufRing::new(config.recv_buffers, config.recv_buffer_bytes)
            .map_err(|e| SetupError::new("provided buffer ring allocation", e))?;
        // Before the registration: from there on nothing may fail until `Uring` owns both, or
        // the locals would drop `bufs` (declared later) before `ring`.
        let doorbell = Doorbell::new().map_err(|e| SetupError::new("eventfd", e))?;
        // SAFETY: the ring mapping lives in `bufs`, which outlives the registration: `Drop for
        // Uring` tears the io_uring down before any field drops, so `bufs` is unmapped only after.
        // The entry count is what we register.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(bufs.ring_addr(), bufs.entries(), BUFFER_GROUP, 0)
                .map_err(|e| SetupError::new("io_uring_register(PBUF_RING)", e))?;
        }
        let mut uring = Uring {
            ring: ManuallyDrop::new(ring),
            bufs,
            doorbell,
            doorbell_buf: Box::leak(Box::new(0u64)),
            features,
            reaped: Vec::new(),
            stats: DriverStats::default(),
            overflow_seen: false,
            #[cfg(test)]
            flush_fault: None,
        };
        uring.arm_doorbell();
        Ok(uring)
    }

    pub fn features(&self) -> &RingFeatures {
        &self.features
    }

    fn arm_doorbell(&mut self) {
        let buf: *mut u64 = self.doorbell_buf;
        let entry = opcode::Read::new(types::Fd(self.doorbell.raw_fd()), buf.cast(), 8)
            .build()
            .user_data(DOORBELL_USER_DATA.to_u64());
        self.push(entry);
    }

    /// Queues one submission; a full queue is flushed to the kernel and the push retried.
    fn push(&mut self, entry: squeue::Entry) {
        let mut backoff = FLUSH_BACKOFF_MIN;
        loop {
            // SAFETY: every entry built in this file points only at memory the caller has
            // promised (send_msg) or this struct owns (doorbell, buffer ring) until its final
            // completion.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            self.stats.sq_full += 1;
            // io_uring_enter errno table while flushing a full queue. None of these is the
            // caller's to handle: a full queue is flushed and retried, never an error.
            // - EINTR: a signal before anything was submitted: retry at once.
            // - EBUSY: the completion queue is overflowing and the kernel takes no more
            //   submissions until we reap: reap into `reaped`, retry.
            // - EAGAIN: the kernel could not allocate requests for a moment: reap (completions
            //   free requests), back off briefly so the shortage can pass, retry.
            // - anything else (EBADF, EFAULT, EINVAL, EEXIST from another thread) means this
            //   ring is misused: a bug in this crate.
            match self.flush() {
                Ok(_) => backoff = FLUSH_BACKOFF_MIN,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) => self.stats.enter_retries += 1,
                    Some(libc::EBUSY) => {
                        self.stats.enter_retries += 1;
                        self.reap_into_buffer();
                    }
                    Some(libc::EAGAIN) => {
                        self.stats.enter_retries += 1;
                        self.reap_into_buffer();
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(FLUSH_BACKOFF_MAX);
                    }
                    _ => panic!("io_uring_enter failed while flushing a full queue: {e}"),
                },
            }
        }
    }

    /// Hands the queued submissions to the kernel (`push` on a full queue).
    fn flush(&mut self) -> io::Result<usize> {
        #[cfg(test)]
        if let Some(errno) = self.flush_fault.as_mut().and_then(|f| f(&self.ring)) {
            return Err(io::Error::from_raw_os_error(errno));
        }
        self.ring.submit()
    }

    /// Reaps into `reaped`, returned first by the next `completions`.
    fn reap_into_buffer(&mut self) {
        // Straight into `reaped`, not a copy put back afterwards: re-arming the doorbell pushes,
        // a push into a full queue reaps again, and what that nested reap adds to `reaped` would
        // be overwritten by the copy.
        if drain_completions(&mut self.ring, &mut self.bufs, &mut self.reaped) {
            self.arm_doorbell();
        }
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        // The doorbell is re-armed only once `out` holds this reap's completions: a reap nested
        // in the re-arm's push goes to `reaped`, after them, as it came after them.
        if drain_completions(&mut self.ring, &mut self.bufs, out) {
            self.arm_doorbell();
        }
    }

    /// ETIME: a wait's timeout passed with nothing ready. EINTR: a signal. EBUSY: completions
    /// are backed up; the caller reaps next. EAGAIN: the kernel was short of memory for a moment.
    /// None of them is a failure; anything else is.
    fn enter_result(&mut self, result: io::Result<usize>) -> io::Result<()> {
        self.note_overflow();
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                self.stats.enter_retries += 1;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn note_overflow(&mut self) {
        let overflow = self.ring.submission().cq_overflow();
        if overflow && !self.overflow_seen {
            self.stats.cq_overflow += 1;
        }
        self.overflow_seen = overflow;
    }
}

impl Driver for Uring {
    fn accept_multi(&mut self, listener: RawFd, user_data: UserData) {
        let e = opcode::AcceptMulti::new(types::Fd(listener))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data.to_u64());
        self.push(e);
    }

    fn recv_multi(&mut self, fd: RawFd, user_data: UserData) {
        let e = opcode::RecvMulti::new(types::Fd(fd), BUFFER_GROUP)
            .build()
            .user_data(user_data.to_u64());
        self.push(e);
    }

    unsafe fn send_msg(&mut self, fd: RawFd, msg: *const libc::msghdr, user_data: UserData) {
        let e = opcode::SendMsg::new(types::Fd(fd), msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(user_data.to_u64());
        self.push(e);
    }

    fn shutdown_write(&mut self, fd: RawFd, user_data: UserData) {
        let e = opcode::Shutdown::new(types::Fd(fd), libc::SHUT_WR)
            .build()
            .user_data(user_data.to_u64());
        self.push(e);
    }

    fn close(&mut self, fd: RawFd, user_data: UserData) {
        let e = opcode::Close::new(types::Fd(fd))
            .build()
            .user_data(user_data.to_u64());
        self.push(e);
    }

    fn cancel_fd(&mut self, fd: RawFd, user_data: UserData) {
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
            .build()
            .user_data(user_data.to_u64());
        self.push(e);
    }

    fn cancel(&mut self, target: UserData, user_data: UserData) {
        let e = opcode::AsyncCancel::new(target.to_u64())
            .build()
            .user_data(user_data.to_u64());
        self.push(e);
    }

    fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
        if !self.reaped.is_empty() {
            return self.submit();
        }
        let ts = types::Timespec::new()
            .sec(timeout.as_secs())
            .nsec(timeout.subsec_nanos());
        let args = types::SubmitArgs::new().timespec(&ts);
        let result = self.ring.submitter().submit_with_args(1, &args);
        self.enter_result(result)
    }

    fn submit(&mut self) -> io::Result<()> {
        let result = self.ring.submit();
        self.enter_result(result)
    }

    fn completions(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.reaped);
        self.reap(out);
    }

    fn buffer(&self, id: u16, len: usize) -> &[u8] {
        self.bufs.buffer(id, len)
    }

    fn recycle(&mut self, id: u16) {
        self.bufs.recycle(id);
    }

    fn buffers_available(&self) -> usize {
        self.bufs.available()
    }

    fn doorbell(&self) -> Doorbell {
        self.doorbell.clone()
    }

    fn stats(&self) -> DriverStats {
        self.stats
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // The io_uring goes first, before the fields drop: the kernel reads the provided-buffer
        // ring's entries and writes into its buffers (`bufs`) until the ring is torn down. This
        // does not rest on field order.
        // SAFETY: `ring` is dropped exactly once, here, and never used after.
        unsafe { ManuallyDrop::drop(&mut self.ring) };
    }
}

impl AsRawFd for Uring {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uring_or_skip(sq_entries: u32) -> Option<Uring> {
        let config = RingConfig {
            sq_entries,
            cq_entries: 64,
            recv_buffers: 4,
            recv_buffer_bytes: 64,
        };
        match Uring::new(&config) {
            Ok(u) => Some(u),
            Err(e) => {
                eprintln!("SKIP: io_uring unavailable: {e}");
                None
            }
        }
    }

    /// A cancel of an operation that does not exist: completes at once with -ENOENT.
    fn cancel_nothing(u: &mut Uring, i: u32) {
        u.cancel(
            UserData::new(1_000_000 + i, 0, Op::Recv),
            UserData::new(i, 0, Op::Cancel),
        );
    }

    /// Submits and gathers completions until `pred` holds or 5 s pass.
    fn collect(u: &mut Uring, out: &mut Vec<Completion>, pred: impl Fn(&[Completion]) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            u.completions(out);
            if pred(out) || std::time::Instant::now() > deadline {
                return;
            }
            u.submit_and_wait(Duration::from_millis(20)).unwrap();
        }
    }

    fn cancel_slots(out: &[Completion]) -> Vec<u32> {
        let mut slots: Vec<u32> = out
            .iter()
            .filter(|c| c.user_data.op() == Some(Op::Cancel))
            .map(|c| c.user_data.slot())
            .collect();
        slots.sort_unstable();
        slots
    }

    #[test]
    fn eagain_while_flushing_a_full_queue_is_retried() {
        let Some(mut u) = uring_or_skip(4) else {
            return;
        };
        u.submit().unwrap();
        let mut faults = 3;
        u.flush_fault = Some(Box::new(move |_| {
            faults -= 1;
            (faults >= 0).then_some(libc::EAGAIN)
        }));
        for i in 0..20 {
            cancel_nothing(&mut u, i);
        }
        u.submit().unwrap();
        let mut out = Vec::new();
        collect(&mut u, &mut out, |c| cancel_slots(c).len() >= 20);
        assert_eq!(cancel_slots(&out), (0..20).collect::<Vec<_>>(), "{out:?}");
        assert!(u.stats().enter_retries >= 3, "{:?}", u.stats());
    }

    /// Runs the completion work the kernel deferred (DEFER_TASKRUN) without submitting.
    fn run_deferred_work(ring: &IoUring) {
        const IORING_ENTER_GETEVENTS: u32 = 1;
        // SAFETY: no submissions and no argument: the kernel only posts ready completions.
        unsafe {
            ring.submitter()
                .enter::<libc::sigset_t>(0, 0, IORING_ENTER_GETEVENTS, None)
                .unwrap();
        }
    }

    /// The doorbell's completion makes the reap of a full queue's flush re-arm it; that push
    /// finds the queue still full and reaps again. What the inner reap takes (a recv) must be
    /// delivered, after what the outer one took, and nothing twice.
    #[test]
    fn a_reap_nested_in_a_flush_loses_no_completion() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let Some(mut u) = uring_or_skip(4) else {
            return;
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let recv = UserData::new(7, 0, Op::Recv);
        u.recv_multi(server.as_raw_fd(), recv);
        u.submit().unwrap();
        // Four cancels fill the 4-entry queue; the fifth push flushes.
        for i in 0..4 {
            cancel_nothing(&mut u, i);
        }
        let doorbell = u.doorbell();
        let mut calls = 0;
        u.flush_fault = Some(Box::new(move |ring| {
            calls += 1;
            match calls {
                // The outer reap finds the doorbell's completion, and re-arms it.
                1 => doorbell.ring(),
                // The re-arm's flush, nested: the inner reap finds the recv's.
                2 => client.write_all(b"x").unwrap(),
                _ => return None,
            }
            run_deferred_work(ring);
            Some(libc::EAGAIN)
        }));
        cancel_nothing(&mut u, 4);
        u.submit().unwrap();
        let mut out = Vec::new();
        let is_recv = |c: &Completion| c.user_data == recv && c.result == 1;
        collect(&mut u, &mut out, |c| {
            cancel_slots(c).len() >= 5 && c.iter().any(is_recv)
        });
        assert_eq!(cancel_slots(&out), [0, 1, 2, 3, 4], "{out:?}");
        assert_eq!(out.iter().filter(|c| is_recv(c)).count(), 1, "{out:?}");
        let doorbells = out.iter().filter(|c| c.user_data == DOORBELL_USER_DATA);
        assert_eq!(doorbells.count(), 1, "{out:?}");
        let doorbell_at = out.iter().position(|c| c.user_data == DOORBELL_USER_DATA);
        let recv_at = out.iter().position(is_recv);
        assert!(doorbell_at < recv_at, "reaped out of order: {out:?}");
        assert_eq!(u.buffers_available(), 3);
    }

    #[test]
    fn queue_sizes_beyond_the_kernel_limits_are_named_not_blamed_on_its_age() {
        let sized = |sq_entries, cq_entries| RingConfig {
            sq_entries,
            cq_entries,
            recv_buffers: 2,
            recv_buffer_bytes: 64,
        };
        for (sq, cq) in [(32768, 131072), (65536, 65536), (64, 32), (0, 16)] {
            let e = match Uring::new(&sized(sq, cq)) {
                Ok(_) => panic!("sq {sq} cq {cq} accepted"),
                Err(e) => e,
            };
            let text = e.to_string();
            assert_eq!(e.step, QUEUE_SIZE_CHECK, "sq {sq} cq {cq}: {text}");
            assert!(!text.contains("too old"), "{text}");
            assert!(
                text.contains("65536") && text.contains("RINGFAN_RING_ENTRIES"),
                "{text}"
            );
        }
    }

    #[test]
    fn kernel_version_parses() {
        assert_eq!(kernel_version("6.18.44-fc-v595"), Some((6, 18)));
        assert_eq!(kernel_version("5.15.0"), Some((5, 15)));
        assert_eq!(kernel_version("garbage"), None);
    }

    #[test]
    fn advice_names_the_fix_for_each_cause() {
        let e = |errno| SetupError::new("io_uring_setup", io::Error::from_raw_os_error(errno));
        assert!(e(libc::EPERM)
            .to_string()
            .contains("kernel.io_uring_disabled"));
        assert!(e(libc::EPERM).to_string().contains("seccomp"));
        assert!(e(libc::ENOSYS).to_string().contains("gVisor"));
        assert!(e(libc::EINVAL).to_string().contains("too old"));
        assert!(e(libc::ENOMEM).to_string().contains("ulimit -l"));
    }
}

//! The epoll driver: readiness turned into the completions the io_uring driver posts.
//!
//! For hosts that refuse io_uring (the sysctl `kernel.io_uring_disabled`, the default seccomp
//! profiles of Docker Engine >= 25 and containerd 2, gVisor). The connection logic is written
//! against io_uring's completions, so this driver reproduces those completions, not merely
//! their effects:
//!
//! - Multishot accept and recv are epoll interests that stay registered until the operation's
//!   final completion. Each readiness becomes as many completions as the socket yields, in a
//!   bounded burst per fd per wait (fairness); registrations are level-triggered, so what is left
//!   is reported again by the next wait.
//! - Receives land in a pool of `recv_buffers` buffers kept by the provided-buffer ring's rules:
//!   a buffer is the caller's from the completion that names it until [`Driver::recycle`], and a
//!   readiness met with no free buffer ends the recv with `-ENOBUFS`, the data left in the socket.
//! - A send is tried when submitted and parked on EPOLLOUT only on EAGAIN; it completes with what
//!   the kernel took, possibly short, as io_uring's does.
//! - Shutdown, close and cancels complete when submitted.
//!
//! Submissions are queued and performed in order by `submit`/`submit_and_wait`, like SQEs.
//! One epoll registration per fd carries the combined interest of the fd's operations; it is
//! removed as soon as no operation remains, because a closed fd's number is soon reused.
//!
//! Not emulated: `RingConfig::sq_entries`/`cq_entries` (nothing to size), and the
//! `sq_full`/`cq_overflow` counters, which stay 0.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::{Completion, Doorbell, Driver, DriverStats, Op, RingConfig, UserData};

/// The doorbell completion, tagged as the io_uring driver tags it.
const DOORBELL_USER_DATA: UserData = UserData::new(u32::MAX, 0, Op::Doorbell);
/// epoll token of the doorbell's eventfd; socket registrations carry their fd (< 2^31).
const DOORBELL_TOKEN: u64 = u64::MAX;
/// Readiness events taken per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 256;
/// Most buffers filled from one fd per wait, so one busy sender cannot take a whole turn.
const RECV_BURST: usize = 8;
/// Most connections accepted from one listener per wait.
const ACCEPT_BURST: usize = 32;

const EPOLLIN: u32 = libc::EPOLLIN as u32;
const EPOLLOUT: u32 = libc::EPOLLOUT as u32;
const EPOLLERR_HUP: u32 = (libc::EPOLLERR | libc::EPOLLHUP) as u32;

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// A submission not yet performed.
enum Sub {
    Accept(RawFd, UserData),
    Recv(RawFd, UserData),
    Send(RawFd, *const libc::msghdr, UserData),
    Shutdown(RawFd, UserData),
    Close(RawFd, UserData),
    CancelFd(RawFd, UserData),
    Cancel(UserData, UserData),
}

/// The operations that wait for readiness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Accept,
    Recv,
    Send,
}

const KINDS: [Kind; 3] = [Kind::Accept, Kind::Recv, Kind::Send];

/// What waits on one fd, and what epoll was told about it.
struct FdOps {
    accept: Option<UserData>,
    recv: Option<UserData>,
    send: Option<UserData>,
    /// The parked send's header; the caller keeps it valid until the send's final completion.
    send_msg: *const libc::msghdr,
    /// Events registered with epoll; 0 while not registered.
    registered: u32,
}

impl FdOps {
    fn new() -> Self {
        FdOps {
            accept: None,
            recv: None,
            send: None,
            send_msg: std::ptr::null(),
            registered: 0,
        }
    }

    fn slot(&mut self, kind: Kind) -> &mut Option<UserData> {
        match kind {
            Kind::Accept => &mut self.accept,
            Kind::Recv => &mut self.recv,
            Kind::Send => &mut self.send,
        }
    }

    fn wanted(&self) -> u32 {
        let mut events = 0;
        if self.accept.is_some() || self.recv.is_some() {
            events |= EPOLLIN;
        }
        if self.send.is_some() {
            events |= EPOLLOUT;
        }
        events
    }
}

/// Receive buffers with the provided-buffer ring's semantics: taken by a completion, owned by
/// the caller until recycled.
struct BufPool {
    memory: Box<[u8]>,
    buffer_bytes: usize,
    free: Vec<u16>,
    /// True from `take` until `put`.
    held: Vec<bool>,
}

impl BufPool {
    /// Same limits as the provided-buffer ring, so a configuration means the same on both
    /// drivers: `count` a power of two no larger than 32768.
    fn new(count: u16, buffer_bytes: usize) -> io::Result<Self> {
        if !count.is_power_of_two() || count > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer ring entries must be a power of two no larger than 32768",
            ));
        }
        // A zero-byte buffer would make every recv look like the peer's FIN; results are i32.
        if buffer_bytes == 0 || buffer_bytes > i32::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "receive buffer size must be between 1 byte and 2 GiB",
            ));
        }
        let total = (count as usize)
            .checked_mul(buffer_bytes)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "buffer pool too large"))?;
        let layout = std::alloc::Layout::array::<u8>(total)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "buffer pool too large"))?;
        // SAFETY: `total > 0`, so the layout is not zero-sized. A null result is an allocation
        // failure, reported. Otherwise the allocation is `total` initialised (zero) bytes from the
        // global allocator with the layout of a `[u8; total]`, exactly what a `Box<[u8]>` of that
        // length owns and frees; nothing else refers to it. (Zeroed allocation stays lazily
        // mapped, like the io_uring driver's anonymous mapping.)
        let memory = unsafe {
            let ptr = std::alloc::alloc_zeroed(layout);
            if ptr.is_null() {
                return Err(io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    "cannot allocate the receive buffer pool",
                ));
            }
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, total))
        };
        Ok(BufPool {
            memory,
            buffer_bytes,
            // Popped from the back: buffer 0 first.
            free: (0..count).rev().collect(),
            held: vec![false; count as usize],
        })
    }

    fn take(&mut self) -> Option<u16> {
        let id = self.free.pop()?;
        self.held[id as usize] = true;
        Some(id)
    }

    fn put(&mut self, id: u16) {
        let held = self.held.get_mut(id as usize);
        assert!(
            held.as_deref() == Some(&true),
            "buffer {id} recycled but not held (recycled twice, or never handed out)"
        );
        *held.expect("checked") = false;
        self.free.push(id);
    }

    fn buffer(&self, id: u16, len: usize) -> &[u8] {
        assert!(
            (id as usize) < self.held.len() && len <= self.buffer_bytes,
            "buffer {id}/{len} out of range"
        );
        // As the provided-buffer ring: a buffer not held may be being filled by the next recv.
        assert!(
            self.held[id as usize],
            "buffer {id} read but not held (already recycled, or never handed out)"
        );
        let start = id as usize * self.buffer_bytes;
        &self.memory[start..start + len]
    }

    fn buffer_mut(&mut self, id: u16) -> &mut [u8] {
        let start = id as usize * self.buffer_bytes;
        &mut self.memory[start..start + self.buffer_bytes]
    }

    fn available(&self) -> usize {
        self.free.len()
    }
}

/// `sendmsg` without blocking: `Some(result)` when the send is over (bytes taken, or -errno),
/// `None` when the socket buffer is full (EAGAIN) and the send waits for EPOLLOUT.
///
/// # Safety
/// `msg` must be valid as [`Driver::send_msg`] requires.
unsafe fn try_send(fd: RawFd, msg: *const libc::msghdr) -> Option<i32> {
    loop {
        // SAFETY: the caller's promise: `msg`, its iovecs and their buffers are valid and
        // unchanged until this send's final completion, which has not been posted yet.
        let n = unsafe { libc::sendmsg(fd, msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
        if n >= 0 {
            // The kernel moves at most MAX_RW_COUNT (< 2^31) bytes per call.
            return Some(n.min(i32::MAX as isize) as i32);
        }
        // sendmsg errno table:
        // - EINTR: a signal before anything was sent: retry at once.
        // - EAGAIN: socket buffer full: wait for EPOLLOUT (io_uring polls the same way).
        // - everything else ends the send with -errno, as io_uring reports it: peer gone
        //   (EPIPE, ECONNRESET, ETIMEDOUT), kernel short of memory (ENOBUFS, ENOMEM: the caller
        //   retries), or a caller bug (EBADF, ENOTSOCK, EFAULT, EINVAL, EMSGSIZE).
        match errno() {
            libc::EINTR => continue,
            libc::EAGAIN => return None,
            e => return Some(-e),
        }
    }
}

/// A readiness-based [`Driver`] on epoll, for hosts without io_uring. See the module docs for how
/// each operation is emulated. Build it on the thread that uses it.
pub struct Epoll {
    epfd: OwnedFd,
    doorbell: Doorbell,
    pool: BufPool,
    /// Operations waiting for readiness, by fd. An fd is present exactly while it has one.
    fds: HashMap<RawFd, FdOps>,
    /// Where each waiting operation is: exactly the operations in `fds`, by user_data, so
    /// `cancel` is one lookup however many wait.
    armed: HashMap<UserData, (RawFd, Kind)>,
    queued: Vec<Sub>,
    ready: Vec<Completion>,
    events: Vec<libc::epoll_event>,
    stats: DriverStats,
}

impl Epoll {
    pub fn new(config: &RingConfig) -> io::Result<Self> {
        let pool = BufPool::new(config.recv_buffers, config.recv_buffer_bytes)?;
        // SAFETY: epoll_create1 takes no pointers; the result is checked before use.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `epfd` was just returned by epoll_create1 and is owned by nobody else.
        let epfd = unsafe { OwnedFd::from_raw_fd(epfd) };
        let doorbell = Doorbell::new()?;
        let mut ev = libc::epoll_event {
            events: EPOLLIN,
            u64: DOORBELL_TOKEN,
        };
        // SAFETY: both fds are open and owned by this struct; `ev` is a live local.
        if unsafe {
            libc::epoll_ctl(
                epfd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                doorbell.raw_fd(),
                &mut ev,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            epfd,
            doorbell,
            pool,
            fds: HashMap::new(),
            armed: HashMap::new(),
            queued: Vec::new(),
            ready: Vec::new(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT],
            stats: DriverStats::default(),
        })
    }

    fn post(&mut self, user_data: UserData, result: i32, more: bool, buffer: Option<u16>) {
        self.ready.push(Completion {
            user_data,
            result,
            more,
            buffer,
        });
    }

    fn finish(&mut self, user_data: UserData, result: i32) {
        self.post(user_data, result, false, None);
    }

    fn perform_queued(&mut self) {
        let mut queued = std::mem::take(&mut self.queued);
        for sub in queued.drain(..) {
            self.perform(sub);
        }
        self.queued = queued;
    }

    fn perform(&mut self, sub: Sub) {
        match sub {
            Sub::Accept(fd, ud) => {
                // accept4 has no per-call MSG_DONTWAIT: the listener itself must not block, or an
                // accept after the backlog emptied would stall the loop. Set on every arm, so a
                // caller that switched it back between two arms is still safe.
                match set_nonblocking(fd) {
                    Ok(()) => self.arm(fd, Kind::Accept, ud, std::ptr::null()),
                    Err(e) => self.finish(ud, -e),
                }
            }
            Sub::Recv(fd, ud) => self.arm(fd, Kind::Recv, ud, std::ptr::null()),
            Sub::Send(fd, msg, ud) => {
                if self.fds.get(&fd).is_some_and(|o| o.send.is_some()) {
                    return self.finish(ud, -libc::EBUSY);
                }
                // SAFETY: `msg` came through `send_msg`, whose caller keeps it valid until this
                // send's final completion.
                match unsafe { try_send(fd, msg) } {
                    Some(result) => self.finish(ud, result),
                    None => self.arm(fd, Kind::Send, ud, msg),
                }
            }
            Sub::Shutdown(fd, ud) => {
                // SAFETY: plain syscall, integer arguments.
                let r = unsafe { libc::shutdown(fd, libc::SHUT_WR) };
                // shutdown errno table: ENOTCONN (the peer reset first) is the peer gone; EBADF,
                // ENOTSOCK, EINVAL are caller bugs. All are reported as -errno, as io_uring does.
                self.finish(ud, if r < 0 { -errno() } else { 0 });
            }
            Sub::Close(fd, ud) => {
                // The caller has nothing in flight on `fd`. Should it have, those operations end
                // with -ECANCELED (each still gets its one final completion) and the registration
                // goes before the fd number can be reused.
                self.end_all(fd, -libc::ECANCELED);
                // SAFETY: the caller hands `fd` over to be closed; nothing here uses it after.
                let r = unsafe { libc::close(fd) };
                // close errno table: EINTR leaves the fd closed on Linux, so it is success;
                // EBADF is a caller bug, EIO a lost write: both reported as -errno.
                let result = match r {
                    0 => 0,
                    _ => match errno() {
                        libc::EINTR => 0,
                        e => -e,
                    },
                };
                self.finish(ud, result);
            }
            Sub::CancelFd(fd, ud) => {
                let n = self.end_all(fd, -libc::ECANCELED);
                // As io_uring's IORING_ASYNC_CANCEL_ALL: the number cancelled, 0 for none (not
                // -ENOENT, which only a single-target cancel reports).
                self.finish(ud, n);
            }
            Sub::Cancel(target, ud) => {
                let result = match self.find(target) {
                    Some((fd, kind)) => {
                        self.disarm(fd, kind);
                        self.finish(target, -libc::ECANCELED);
                        self.update_interest(fd);
                        0
                    }
                    None => -libc::ENOENT,
                };
                self.finish(ud, result);
            }
        }
    }

    /// Registers a waiting operation. A second one of the same kind on the same fd, or one whose
    /// user_data is already waiting, is refused with -EBUSY (the server never does either;
    /// io_uring would run both, and cancel one of the two).
    fn arm(&mut self, fd: RawFd, kind: Kind, ud: UserData, msg: *const libc::msghdr) {
        if self.armed.contains_key(&ud) {
            return self.finish(ud, -libc::EBUSY);
        }
        let ops = self.fds.entry(fd).or_insert_with(FdOps::new);
        let slot = ops.slot(kind);
        if slot.is_some() {
            self.update_interest(fd);
            return self.finish(ud, -libc::EBUSY);
        }
        *slot = Some(ud);
        if kind == Kind::Send {
            ops.send_msg = msg;
        }
        self.armed.insert(ud, (fd, kind));
        self.update_interest(fd);
    }

    /// Forgets the waiting operation of `kind` on `fd`; the caller posts its final completion and
    /// then calls `update_interest`.
    fn disarm(&mut self, fd: RawFd, kind: Kind) -> Option<UserData> {
        let ops = self.fds.get_mut(&fd)?;
        let ud = ops.slot(kind).take()?;
        if kind == Kind::Send {
            ops.send_msg = std::ptr::null();
        }
        let indexed = self.armed.remove(&ud);
        debug_assert_eq!(indexed, Some((fd, kind)), "index out of step for {ud:?}");
        Some(ud)
    }

    /// Ends every operation waiting on `fd` with `result`; returns how many there were.
    fn end_all(&mut self, fd: RawFd, result: i32) -> i32 {
        let mut n = 0;
        for kind in KINDS {
            if let Some(ud) = self.disarm(fd, kind) {
                self.finish(ud, result);
                n += 1;
            }
        }
        self.update_interest(fd);
        n
    }

    /// The waiting operation tagged `target`: one hash lookup, never a scan of every fd (cancels
    /// of operations that already ended are common, and each would visit every connection).
    fn find(&self, target: UserData) -> Option<(RawFd, Kind)> {
        self.armed.get(&target).copied()
    }

    /// Brings the epoll registration of `fd` in line with what waits on it: added, modified, or
    /// deleted (with the fd's entry) once nothing does.
    fn update_interest(&mut self, fd: RawFd) {
        let Some(ops) = self.fds.get(&fd) else {
            return;
        };
        let (wanted, registered) = (ops.wanted(), ops.registered);
        if wanted == 0 {
            if registered != 0 {
                // Errors are ignored: ENOENT/EBADF mean the registration is already gone.
                let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0);
            }
            self.fds.remove(&fd);
            return;
        }
        if wanted == registered {
            return;
        }
        let first = if registered == 0 {
            libc::EPOLL_CTL_ADD
        } else {
            libc::EPOLL_CTL_MOD
        };
        // epoll_ctl errno table: EEXIST on ADD / ENOENT on MOD mean our record disagrees with the
        // kernel's (an fd closed behind our back and reused): retry with the other call. EBADF,
        // EPERM (a file that cannot be polled), ENOMEM and ENOSPC (fs.epoll.max_user_watches)
        // end every operation on the fd with -errno.
        let result = match self.ctl(first, fd, wanted) {
            Err(libc::EEXIST) => self.ctl(libc::EPOLL_CTL_MOD, fd, wanted),
            Err(libc::ENOENT) => self.ctl(libc::EPOLL_CTL_ADD, fd, wanted),
            other => other,
        };
        match result {
            Ok(()) => self.fds.get_mut(&fd).expect("present").registered = wanted,
            Err(e) => {
                self.end_all(fd, -e);
            }
        }
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32) -> Result<(), i32> {
        let mut ev = libc::epoll_event {
            events,
            u64: fd as u32 as u64,
        };
        // SAFETY: `ev` is a live local (ignored by DEL); a bad `fd` is reported, not undefined.
        if unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), op, fd, &mut ev) } < 0 {
            Err(errno())
        } else {
            Ok(())
        }
    }

    /// One `epoll_wait`, its readiness turned into completions.
    fn poll(&mut self, timeout_ms: i32) -> io::Result<()> {
        // SAFETY: `events` is a live buffer of `len` entries the kernel may write.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            // epoll_wait errno table: EINTR (a signal) is a short wait; EBADF, EFAULT, EINVAL
            // would be bugs in this file.
            return match errno() {
                libc::EINTR => {
                    self.stats.enter_retries += 1;
                    Ok(())
                }
                e => Err(io::Error::from_raw_os_error(e)),
            };
        }
        for i in 0..n as usize {
            let ev = self.events[i];
            let (flags, token) = (ev.events, ev.u64);
            if token == DOORBELL_TOKEN {
                self.ring_doorbell();
            } else {
                self.on_ready(token as RawFd, flags);
            }
        }
        Ok(())
    }

    fn ring_doorbell(&mut self) {
        let mut count = 0u64;
        // SAFETY: reads 8 bytes into a live local. One read empties the eventfd counter; EAGAIN
        // (already drained) is as good.
        unsafe { libc::read(self.doorbell.raw_fd(), (&mut count as *mut u64).cast(), 8) };
        self.finish(DOORBELL_USER_DATA, 8);
    }

    fn on_ready(&mut self, fd: RawFd, flags: u32) {
        let Some(ops) = self.fds.get(&fd) else {
            return; // nothing waits any more (no registration is left behind; kept for safety)
        };
        let (accept, recv, send) = (ops.accept.is_some(), ops.recv.is_some(), ops.send.is_some());
        // Errors and hang-ups wake every waiter: the syscall then reports what happened.
        let readable = flags & (EPOLLIN | EPOLLERR_HUP) != 0;
        let writable = flags & (EPOLLOUT | EPOLLERR_HUP) != 0;
        if accept && readable {
            self.accept_ready(fd);
        }
        if recv && readable {
            self.recv_ready(fd);
        }
        if send && writable {
            self.send_ready(fd);
        }
        self.update_interest(fd);
    }

    fn accept_ready(&mut self, listener: RawFd) {
        let Some(ud) = self.fds.get(&listener).and_then(|o| o.accept) else {
            return;
        };
        for _ in 0..ACCEPT_BURST {
            // SAFETY: null address pointers are allowed; the new fd goes to the caller.
            let fd = unsafe {
                libc::accept4(
                    listener,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if fd >= 0 {
                self.post(ud, fd, true, None);
                continue;
            }
            // accept4 errno table:
            // - EAGAIN: backlog empty: keep waiting.
            // - EINTR: retry.
            // - ECONNABORTED, EPROTO and the network errors accept(2) says to treat like EAGAIN
            //   (ENETDOWN, ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH, EOPNOTSUPP,
            //   ENETUNREACH): that one connection died in the backlog; go on with the next.
            // - anything else (EMFILE, ENFILE, ENOBUFS, ENOMEM: out of resources; EBADF, EINVAL:
            //   bugs) ends the multishot with -errno, as io_uring does; the caller re-arms.
            match errno() {
                libc::EAGAIN => return,
                libc::EINTR
                | libc::ECONNABORTED
                | libc::EPROTO
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH => continue,
                e => {
                    self.disarm(listener, Kind::Accept);
                    return self.finish(ud, -e);
                }
            }
        }
    }

    fn recv_ready(&mut self, fd: RawFd) {
        let Some(ud) = self.fds.get(&fd).and_then(|o| o.recv) else {
            return;
        };
        for _ in 0..RECV_BURST {
            let Some(id) = self.pool.take() else {
                // Readable (or the last buffer came back full) and no buffer: as io_uring, which
                // selects the buffer before reading, the multishot ends with -ENOBUFS; the data
                // stays in the socket and the caller re-arms once buffers are back.
                self.disarm(fd, Kind::Recv);
                return self.finish(ud, -libc::ENOBUFS);
            };
            let buf = self.pool.buffer_mut(id);
            let n = loop {
                // SAFETY: `buf` is a live, exclusively borrowed slice of `buf.len()` bytes.
                let n = unsafe {
                    libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
                };
                if n >= 0 || errno() != libc::EINTR {
                    break n;
                }
            };
            let capacity = buf.len();
            if n > 0 {
                // n <= capacity <= i32::MAX (checked in BufPool::new).
                self.post(ud, n as i32, true, Some(id));
                if (n as usize) < capacity {
                    return; // drained for now; level-triggered readiness reports any more
                }
                continue;
            }
            self.pool.put(id);
            // recv errno table:
            // - 0 bytes: the peer's FIN: final completion 0, no buffer.
            // - EAGAIN: nothing (more) to read: keep waiting.
            // - anything else ends the multishot with -errno: peer gone (ECONNRESET,
            //   ETIMEDOUT, EHOSTUNREACH, ENETUNREACH), kernel short of memory (ENOMEM), or a
            //   caller bug (EBADF, ENOTSOCK, ENOTCONN, EINVAL).
            let result = match n {
                0 => 0,
                _ => match errno() {
                    libc::EAGAIN => return,
                    e => -e,
                },
            };
            self.disarm(fd, Kind::Recv);
            return self.finish(ud, result);
        }
    }

    fn send_ready(&mut self, fd: RawFd) {
        let Some((ud, msg)) = self
            .fds
            .get(&fd)
            .and_then(|o| o.send.map(|ud| (ud, o.send_msg)))
        else {
            return;
        };
        // SAFETY: `msg` was handed to `send_msg` with this send, whose final completion has not
        // been posted: the caller still keeps it valid.
        if let Some(result) = unsafe { try_send(fd, msg) } {
            self.disarm(fd, Kind::Send);
            self.finish(ud, result);
        }
    }
}

fn set_nonblocking(fd: RawFd) -> Result<(), i32> {
    // SAFETY: fcntl with integer arguments only; a bad fd is reported, not undefined.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return Err(errno());
        }
        if flags & libc::O_NONBLOCK == 0
            && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0
        {
            return Err(errno());
        }
    }
    Ok(())
}

/// Whole milliseconds, rounded up so a short wait is not a busy poll.
fn wait_ms(d: Duration) -> i32 {
    d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
}

impl Driver for Epoll {
    /// Also switches the listener to O_NONBLOCK (epoll needs it; io_uring does not care).
    fn accept_multi(&mut self, listener: RawFd, user_data: UserData) {
        self.queued.push(Sub::Accept(listener, user_data));
    }

    fn recv_multi(&mut self, fd: RawFd, user_data: UserData) {
        self.queued.push(Sub::Recv(fd, user_data));
    }

    unsafe fn send_msg(&mut self, fd: RawFd, msg: *const libc::msghdr, user_data: UserData) {
        self.queued.push(Sub::Send(fd, msg, user_data));
    }

    fn shutdown_write(&mut self, fd: RawFd, user_data: UserData) {
        self.queued.push(Sub::Shutdown(fd, user_data));
    }

    fn close(&mut self, fd: RawFd, user_data: UserData) {
        self.queued.push(Sub::Close(fd, user_data));
    }

    fn cancel_fd(&mut self, fd: RawFd, user_data: UserData) {
        self.queued.push(Sub::CancelFd(fd, user_data));
    }

    fn cancel(&mut self, target: UserData, user_data: UserData) {
        self.queued.push(Sub::Cancel(target, user_data));
    }

    /// Performs the queued submissions, then waits for readiness (not at all if a completion is
    /// already waiting to be taken) until one completion is ready or `timeout` passes.
    fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
        self.perform_queued();
        let start = Instant::now();
        loop {
            let ms = if self.ready.is_empty() {
                wait_ms(timeout.saturating_sub(start.elapsed()))
            } else {
                0
            };
            self.poll(ms)?;
            if !self.ready.is_empty() || start.elapsed() >= timeout {
                return Ok(());
            }
        }
    }

    fn submit(&mut self) -> io::Result<()> {
        self.perform_queued();
        Ok(())
    }

    fn completions(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.ready);
    }

    fn buffer(&self, id: u16, len: usize) -> &[u8] {
        self.pool.buffer(id, len)
    }

    fn recycle(&mut self, id: u16) {
        self.pool.put(id);
    }

    fn buffers_available(&self) -> usize {
        self.pool.available()
    }

    fn doorbell(&self) -> Doorbell {
        self.doorbell.clone()
    }

    fn stats(&self) -> DriverStats {
        self.stats
    }
}

impl AsRawFd for Epoll {
    fn as_raw_fd(&self) -> RawFd {
        self.epfd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_hands_out_each_buffer_once_and_takes_it_back() {
        let mut p = BufPool::new(4, 16).unwrap();
        let ids: Vec<u16> = std::iter::from_fn(|| p.take()).collect();
        assert_eq!(ids, [0, 1, 2, 3]);
        assert_eq!(p.available(), 0);
        p.buffer_mut(2)[..3].copy_from_slice(b"abc");
        assert_eq!(p.buffer(2, 3), b"abc");
        p.put(2);
        assert_eq!((p.available(), p.take()), (1, Some(2)));
    }

    #[test]
    #[should_panic(expected = "recycled but not held")]
    fn pool_refuses_a_double_recycle() {
        let mut p = BufPool::new(2, 16).unwrap();
        let id = p.take().unwrap();
        p.put(id);
        p.put(id);
    }

    #[test]
    #[should_panic(expected = "buffer 1 recycled but not held")]
    fn pool_refuses_to_recycle_a_buffer_never_handed_out() {
        let mut p = BufPool::new(2, 16).unwrap();
        p.take().unwrap();
        p.put(1);
    }

    #[test]
    #[should_panic(expected = "buffer 1 read but not held")]
    fn pool_refuses_to_read_a_free_buffer() {
        let mut p = BufPool::new(2, 16).unwrap();
        p.take().unwrap();
        p.buffer(1, 1);
    }

    #[test]
    #[should_panic(expected = "buffer 0 read but not held")]
    fn pool_refuses_to_read_a_recycled_buffer() {
        let mut p = BufPool::new(2, 16).unwrap();
        let id = p.take().unwrap();
        p.put(id);
        p.buffer(id, 1);
    }

    #[test]
    fn pool_limits_match_the_buffer_ring() {
        assert!(BufPool::new(3, 16).is_err());
        assert!(BufPool::new(4, 0).is_err());
        assert!(BufPool::new(1, 1).is_ok());
    }

    fn udp_socket() -> std::net::UdpSocket {
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap()
    }

    /// Performs what is queued and returns the completions posted so far (no readiness waits).
    fn perform(e: &mut Epoll) -> Vec<Completion> {
        e.submit().unwrap();
        let mut out = Vec::new();
        e.completions(&mut out);
        out
    }

    /// Cancel finds its target by user_data alone, so a user_data already waiting is refused
    /// for a second operation (on another fd) instead of making the lookup ambiguous.
    #[test]
    fn a_user_data_already_waiting_is_refused_and_cancel_finds_the_first() {
        let config = RingConfig {
            sq_entries: 8,
            cq_entries: 16,
            recv_buffers: 2,
            recv_buffer_bytes: 64,
        };
        let mut e = Epoll::new(&config).unwrap();
        let (a, b) = (udp_socket(), udp_socket());
        let ud = UserData::new(3, 0, Op::Recv);
        e.recv_multi(a.as_raw_fd(), ud);
        e.recv_multi(b.as_raw_fd(), ud);
        let refused = Completion {
            user_data: ud,
            result: -libc::EBUSY,
            more: false,
            buffer: None,
        };
        assert_eq!(perform(&mut e), [refused]);
        assert_eq!(e.fds.len(), 1, "the refused operation left a registration");
        let cancel = UserData::new(3, 0, Op::Cancel);
        e.cancel(ud, cancel);
        let out = perform(&mut e);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!((out[0].user_data, out[0].result), (ud, -libc::ECANCELED));
        assert_eq!((out[1].user_data, out[1].result), (cancel, 0));
        assert!(e.fds.is_empty() && e.armed.is_empty());
    }

    #[test]
    fn waits_round_up_to_whole_milliseconds() {
        assert_eq!(wait_ms(Duration::ZERO), 0);
        assert_eq!(wait_ms(Duration::from_micros(1)), 1);
        assert_eq!(wait_ms(Duration::from_millis(500)), 500);
        assert_eq!(wait_ms(Duration::MAX), i32::MAX);
    }
}

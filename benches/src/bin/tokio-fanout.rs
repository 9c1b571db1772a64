//! `tokio-fanout`: the epoll baseline that `scripts/bench.sh` measures ringfan against.
//!
//! The same TCP broadcast server as ringfan, speaking the same line protocol, built the
//! straightforward way on tokio (`tokio::net` on epoll, one `tokio::sync::broadcast` channel for
//! the fan-out), and done well rather than as a strawman:
//!
//! - A message is every byte up to and including `\n`, delivered byte for byte to every
//!   other connection (the sender too with `RINGFAN_ECHO=1`), each publisher's lines in order.
//! - Like ringfan's decoder, a reader broadcasts *chunks*: all complete lines of one read go into
//!   the channel as ONE `Bytes` (tagged with the sender's connection id, for echo=0); the partial
//!   tail waits in a `BytesMut` for the next read.
//! - Each connection has a reader task and a writer task (`into_split`, no lock). The writer
//!   takes one message, drains whatever else is already available (up to 1024 items / 1 MiB) and
//!   writes it all with gathered `writev`: one syscall for many messages. TCP_NODELAY is set.
//! - Fairness: a reader takes at most 64 KiB per read and yields to the scheduler after a full
//!   read, so a flooding publisher cannot starve the fan-out (tokio's coop budget helps too).
//! - A line longer than `RINGFAN_MAX_FRAME_BYTES` (the `\n` counts) is never broadcast: the client
//!   gets `-ERR frame exceeds RINGFAN_MAX_FRAME_BYTES (<n>)\n`, then FIN.
//! - A subscriber that lags behind the channel (`RecvError::Lagged`, or found lagging while its
//!   socket is full) is evicted: it gets the batch already in hand, then FIN.
//! - Closing is graceful: on the peer's FIN the connection stops receiving, what was already
//!   queued for it is flushed, then FIN; a connection whose write side ended first reads (and
//!   discards) until the peer's FIN. The socket is closed once both halves ended, so no
//!   CLOSE_WAIT is left behind. Each of these waits is bounded by 5 s (ringfan's default
//!   `RINGFAN_CLOSE_TIMEOUT_MS`); a flush that does not finish in time ends in a reset.
//! - SIGINT/SIGTERM: stop accepting, flush every connection and send FIN, bounded by 2 s, exit 0.
//!
//! Configuration (environment): `RINGFAN_LISTEN` (default 127.0.0.1:7000, port 0 picks a free
//! port), `RINGFAN_THREADS` (tokio worker threads, default available cores), `RINGFAN_ECHO` (0/1,
//! default 0, as ringfan's), `RINGFAN_MAX_FRAME_BYTES` (default 65536) and, instead of ringfan's
//! `RINGFAN_SEND_QUEUE_BYTES_MAX`, `TOKIO_FANOUT_CHANNEL_CAPACITY` (broadcast channel capacity in
//! messages, default 65536). An invalid value exits with status 2. Once listening it prints
//! `tokio-fanout listening on ADDR` on stdout. The soft RLIMIT_NOFILE is raised to the hard limit.

use std::io::{self, IoSlice, Write as _};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// Most bytes taken from one connection per read (fairness).
const READ_CHUNK: usize = 64 * 1024;
/// Complete lines shorter than this are copied out of the read buffer into an exact-size `Bytes`
/// (so a small chunk waiting in the channel does not pin a 64 KiB buffer); longer runs are
/// handed out zero-copy.
const COPY_BELOW: usize = 16 * 1024;
/// Writer batch limits (one `writev` carries at most `MAX_IOV` buffers).
const BATCH_MAX_ITEMS: usize = 1024;
const BATCH_MAX_BYTES: usize = 1 << 20;
const MAX_IOV: usize = 1024;
/// Time a closing connection gets to flush, and to wait for the peer's FIN (ringfan's default
/// `RINGFAN_CLOSE_TIMEOUT_MS`).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// On SIGINT/SIGTERM, time all connections get to close gracefully.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// While a writer waits for its socket to drain, how often it checks whether it has lagged.
const LAG_CHECK: Duration = Duration::from_millis(100);
const LISTEN_BACKLOG: u32 = 4096;

struct Config {
    listen: SocketAddr,
    threads: usize,
    echo: bool,
    max_frame_bytes: usize,
    channel_capacity: usize,
}

/// One broadcast item: a run of complete lines from one publisher.
#[derive(Clone)]
struct Msg {
    from: u64,
    bytes: Bytes,
}

/// What the reader tells the writer when the read side ends on its own.
enum Stop {
    /// The peer sent FIN: flush what is queued, then FIN.
    Fin,
    /// Protocol error: flush what is queued, send this error line, then FIN.
    TooLong(Bytes),
    /// Read error (reset): drop the connection.
    Abort,
}

fn main() {
    let cfg = match config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tokio-fanout: {e}");
            std::process::exit(2);
        }
    };
    // One descriptor per connection.
    if let Err(e) = ringfan_testkit::raise_nofile() {
        eprintln!("tokio-fanout: {e}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio-fanout: cannot start the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match rt.block_on(serve(cfg)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tokio-fanout: {e}");
            1
        }
    };
    rt.shutdown_timeout(Duration::from_millis(200));
    std::process::exit(code);
}

async fn serve(cfg: Config) -> io::Result<()> {
    let listener = bind(cfg.listen).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {} (RINGFAN_LISTEN): {e}", cfg.listen),
        )
    })?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let addr = listener.local_addr()?;
    {
        let mut out = io::stdout().lock();
        writeln!(out, "tokio-fanout listening on {addr}")?;
        out.flush()?;
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Every connection task holds a clone; `recv` returns None once all of them have ended.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let accept = tokio::spawn(accept_loop(listener, cfg, shutdown_rx, alive_tx));

    tokio::select! {
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
    }
    // Stop accepting; readers stop broadcasting and drop their senders, so every writer drains
    // what the channel still holds for it, sees `Closed`, and sends FIN.
    let _ = shutdown_tx.send(true);
    let _ = accept.await;
    if tokio::time::timeout(SHUTDOWN_TIMEOUT, alive_rx.recv())
        .await
        .is_err()
    {
        eprintln!(
            "tokio-fanout: shutdown: connections still open after {} ms are closed abortively",
            SHUTDOWN_TIMEOUT.as_millis()
        );
    }
    Ok(())
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn accept_loop(
    listener: TcpListener,
    cfg: Config,
    mut shutdown: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    let (tx, _) = broadcast::channel::<Msg>(cfg.channel_capacity);
    // `Receiver::len` exceeds this exactly when the receiver has lagged (tokio rounds the
    // capacity up to a power of two).
    let lag_limit = cfg.channel_capacity.next_power_of_two();
    let mut next_id: u64 = 0;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, _)) => {
                next_id += 1;
                spawn_connection(stream, next_id, &cfg, lag_limit, &tx, &shutdown, &alive);
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning. Anything else
                // (ECONNABORTED, ...) concerns only that one connection.
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) {
                    eprintln!("tokio-fanout: accept: {e}; retrying in 50 ms");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

fn spawn_connection(
    stream: TcpStream,
    id: u64,
    cfg: &Config,
    lag_limit: usize,
    tx: &broadcast::Sender<Msg>,
    shutdown: &watch::Receiver<bool>,
    alive: &mpsc::Sender<()>,
) {
    let _ = stream.set_nodelay(true);
    let rx = tx.subscribe();
    let (rd, wr) = stream.into_split();
    let (stop_tx, stop_rx) = oneshot::channel::<Stop>();
    let (writer_done_tx, writer_done_rx) = oneshot::channel::<bool>();
    tokio::spawn(reader(
        rd,
        id,
        tx.clone(),
        cfg.max_frame_bytes,
        stop_tx,
        writer_done_rx,
        shutdown.clone(),
        alive.clone(),
    ));
    tokio::spawn(writer(
        wr,
        WriterCtx {
            id,
            echo: cfg.echo,
            lag_limit,
        },
        rx,
        stop_rx,
        writer_done_tx,
        alive.clone(),
    ));
}

/// How the reader's active phase ended.
enum ReadEnd {
    /// Peer FIN or read error: the read half is over.
    Over,
    /// The connection is closing for another reason (protocol error, writer done): read and
    /// discard until the peer's FIN. `writer_running`: the writer has not reported yet.
    DrainUntilFin { writer_running: bool },
    /// Server shutdown: once the writer has flushed and sent FIN, discard what is readable and
    /// close without waiting for the peer (unread input would turn the close into a reset).
    Shutdown,
}

#[allow(clippy::too_many_arguments)]
async fn reader(
    mut rd: OwnedReadHalf,
    id: u64,
    tx: broadcast::Sender<Msg>,
    max_frame_bytes: usize,
    stop: oneshot::Sender<Stop>,
    mut writer_done: oneshot::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    // Bytes at the start of `buf` already known to hold no `\n`.
    let mut scanned = 0usize;
    let mut stop = Some(stop);
    let mut tell = |s: Stop| {
        if let Some(tx) = stop.take() {
            let _ = tx.send(s);
        }
    };
    let end = loop {
        buf.reserve(READ_CHUNK);
        let read = {
            let mut limited = (&mut buf).limit(READ_CHUNK);
            tokio::select! {
                biased;
                r = &mut writer_done => match r {
                    // The writer gave up (I/O error, or no flush within the close timeout): the
                    // connection is reset, nothing to wait for.
                    Ok(true) => break ReadEnd::Over,
                    _ => break ReadEnd::DrainUntilFin { writer_running: false },
                },
                _ = shutdown.changed() => break ReadEnd::Shutdown,
                r = rd.read_buf(&mut limited) => r,
            }
        };
        let n = match read {
            Ok(0) => {
                // FIN. An incomplete last line is never broadcast.
                tell(Stop::Fin);
                break ReadEnd::Over;
            }
            Ok(n) => n,
            Err(_) => {
                tell(Stop::Abort);
                break ReadEnd::Over;
            }
        };

        let (lines, too_long) = take_lines(&mut buf, &mut scanned, max_frame_bytes);
        if let Some(bytes) = lines {
            let _ = tx.send(Msg { from: id, bytes });
        }
        if too_long {
            tell(Stop::TooLong(Bytes::from(format!(
                "-ERR frame exceeds RINGFAN_MAX_FRAME_BYTES ({max_frame_bytes})\n"
            ))));
            break ReadEnd::DrainUntilFin {
                writer_running: true,
            };
        }
        if n == READ_CHUNK {
            // More is likely waiting: let the fan-out (and other connections) run first.
            tokio::task::yield_now().await;
        }
    };
    // Nothing more is broadcast from this connection; at shutdown this lets writers see Closed.
    drop(tx);
    drop(buf);
    read_after_end(end, &mut rd, writer_done).await;
    // `rd` dropped here; the socket closes once the writer has dropped its half too.
}

/// Splits the complete lines off the front of `buf` (None if there is none yet), checking
/// every line's length on the way; true when a line is, or can only become, longer than
/// `max_frame_bytes`. `scanned`: bytes at the start of `buf` already known to hold no `\n`.
fn take_lines(
    buf: &mut BytesMut,
    scanned: &mut usize,
    max_frame_bytes: usize,
) -> (Option<Bytes>, bool) {
    // Find the end of the last complete line.
    let mut complete = 0usize;
    let mut too_long = false;
    for i in memchr::memchr_iter(b'\n', &buf[*scanned..]) {
        let end = *scanned + i + 1;
        if end - complete > max_frame_bytes {
            too_long = true;
            break;
        }
        complete = end;
    }
    if buf.len() - complete >= max_frame_bytes {
        // The partial line can only end beyond the limit.
        too_long = true;
    }
    let lines = (complete > 0).then(|| {
        if complete >= COPY_BELOW {
            buf.split_to(complete).freeze()
        } else {
            let b = Bytes::copy_from_slice(&buf[..complete]);
            buf.advance(complete);
            b
        }
    });
    *scanned = buf.len();
    (lines, too_long)
}

/// The reader's last phase: nothing more is broadcast; wait for the peer's FIN, or the
/// writer, as `end` says.
async fn read_after_end(
    end: ReadEnd,
    rd: &mut OwnedReadHalf,
    writer_done: oneshot::Receiver<bool>,
) {
    let mut sink = vec![0u8; 16 * 1024];
    match end {
        ReadEnd::Over => {}
        ReadEnd::DrainUntilFin { writer_running } => {
            let drain = async {
                while let Ok(n) = rd.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            // Stop at once if the writer ends up resetting the connection.
            let reset = async {
                if !(writer_running && writer_done.await == Ok(true)) {
                    std::future::pending::<()>().await;
                }
            };
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                tokio::select! {
                    _ = drain => {}
                    _ = reset => {}
                }
            })
            .await;
        }
        ReadEnd::Shutdown => {
            let _ = writer_done.await;
            while let Ok(n) = rd.try_read(&mut sink) {
                if n == 0 {
                    break;
                }
            }
        }
    }
}

struct WriterCtx {
    id: u64,
    echo: bool,
    lag_limit: usize,
}

#[derive(Default)]
struct Batch {
    items: Vec<Bytes>,
    bytes: usize,
}

impl Batch {
    fn push(&mut self, m: Msg, ctx: &WriterCtx) {
        if ctx.echo || m.from != ctx.id {
            self.bytes += m.bytes.len();
            self.items.push(m.bytes);
        }
    }
    fn full(&self) -> bool {
        self.items.len() >= BATCH_MAX_ITEMS || self.bytes >= BATCH_MAX_BYTES
    }
    fn clear(&mut self) {
        self.items.clear();
        self.bytes = 0;
    }
}

enum WriteFail {
    /// The subscriber fell behind the channel while its socket was full.
    Lagged,
    Io,
}

/// Progress through a batch: item index, and bytes of that item already written.
#[derive(Default)]
struct Pos {
    idx: usize,
    off: usize,
}

/// How the writer's delivery loop ended.
enum WriteEnd {
    Reader(Stop),
    /// Lagged (evicted as too slow); what it already holds is still delivered, then FIN.
    Evict,
    /// Every sender is gone (shutdown) and everything was delivered.
    Closed,
    Abort,
}

async fn writer(
    wr: OwnedWriteHalf,
    ctx: WriterCtx,
    mut rx: broadcast::Receiver<Msg>,
    mut stop: oneshot::Receiver<Stop>,
    writer_done: oneshot::Sender<bool>,
    _alive: mpsc::Sender<()>,
) {
    let mut batch = Batch {
        items: Vec::with_capacity(64),
        bytes: 0,
    };
    let mut pos = Pos::default();
    let mut stop_live = true;
    let end = loop {
        let first = tokio::select! {
            biased;
            s = &mut stop, if stop_live => match s {
                Ok(s) => break WriteEnd::Reader(s),
                // The reader ended without a word (shutdown): go on until Closed.
                Err(_) => {
                    stop_live = false;
                    continue;
                }
            },
            r = rx.recv() => r,
        };
        match first {
            Ok(m) => batch.push(m, &ctx),
            Err(RecvError::Lagged(_)) => break WriteEnd::Evict,
            Err(RecvError::Closed) => break WriteEnd::Closed,
        }
        let after = gather(&mut rx, &mut batch, &ctx);
        match write_batch(&wr, &batch.items, &mut pos, Some((&rx, ctx.lag_limit))).await {
            Ok(()) => {
                batch.clear();
                pos = Pos::default();
            }
            Err(WriteFail::Lagged) => break WriteEnd::Evict,
            Err(WriteFail::Io) => break WriteEnd::Abort,
        }
        if let Some(end) = after {
            break end;
        }
    };
    close_write(end, wr, &ctx, &mut rx, batch, pos, writer_done).await;
}

/// Takes what else is queued into `batch` without waiting, up to its limits. Some(end) when
/// the channel says the subscriber lagged or every sender is gone.
fn gather(
    rx: &mut broadcast::Receiver<Msg>,
    batch: &mut Batch,
    ctx: &WriterCtx,
) -> Option<WriteEnd> {
    while !batch.full() {
        match rx.try_recv() {
            Ok(m) => batch.push(m, ctx),
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Lagged(_)) => return Some(WriteEnd::Evict),
            Err(TryRecvError::Closed) => return Some(WriteEnd::Closed),
        }
    }
    None
}

/// The writer's last phase: deliver what the connection is owed and send FIN within the close
/// timeout, else reset; then tell the reader which of the two happened.
async fn close_write(
    end: WriteEnd,
    mut wr: OwnedWriteHalf,
    ctx: &WriterCtx,
    rx: &mut broadcast::Receiver<Msg>,
    batch: Batch,
    mut pos: Pos,
    writer_done: oneshot::Sender<bool>,
) {
    // Whether the connection got everything it is owed, then our FIN.
    let closing = async {
        match end {
            WriteEnd::Abort | WriteEnd::Reader(Stop::Abort) => false,
            WriteEnd::Evict | WriteEnd::Closed => {
                // Finish the batch in hand (never a truncated line before the FIN).
                write_batch(&wr, &batch.items, &mut pos, None).await.is_ok()
                    && wr.shutdown().await.is_ok()
            }
            WriteEnd::Reader(Stop::Fin) => finish(&mut wr, ctx, rx, None).await,
            WriteEnd::Reader(Stop::TooLong(line)) => finish(&mut wr, ctx, rx, Some(line)).await,
        }
    };
    let graceful = tokio::time::timeout(CLOSE_TIMEOUT, closing)
        .await
        .unwrap_or(false);
    if !graceful {
        // Abortive close, like ringfan past RINGFAN_CLOSE_TIMEOUT_MS: RST rather than a FIN
        // after a truncated line.
        let _ = wr.as_ref().set_zero_linger();
    }
    // Tells the reader to stop broadcasting and wait for the peer's FIN (or, if not graceful, to
    // drop its half at once).
    let _ = writer_done.send(!graceful);
}

/// Flushes what was already queued for this connection when its read side ended (a snapshot:
/// nothing sent afterwards), then `extra`, then FIN.
async fn finish(
    wr: &mut OwnedWriteHalf,
    ctx: &WriterCtx,
    rx: &mut broadcast::Receiver<Msg>,
    extra: Option<Bytes>,
) -> bool {
    let mut queued = rx.len();
    let mut batch = Batch::default();
    while queued > 0 {
        while queued > 0 && !batch.full() {
            match rx.try_recv() {
                Ok(m) => {
                    queued -= 1;
                    batch.push(m, ctx);
                }
                // Lagged (evicted anyway) or Closed: nothing more to collect.
                Err(_) => queued = 0,
            }
        }
        if write_batch(wr, &batch.items, &mut Pos::default(), None)
            .await
            .is_err()
        {
            return false;
        }
        batch.clear();
    }
    if let Some(line) = extra {
        if write_batch(wr, &[line], &mut Pos::default(), None)
            .await
            .is_err()
        {
            return false;
        }
    }
    wr.shutdown().await.is_ok()
}

/// Writes `items` from `pos` on with gathered writes (`writev`), resuming short writes. With
/// `lag`, while the socket is full it checks every `LAG_CHECK` whether the receiver has fallen
/// behind the channel, and gives up (keeping `pos`) if so.
async fn write_batch(
    wr: &OwnedWriteHalf,
    items: &[Bytes],
    pos: &mut Pos,
    lag: Option<(&broadcast::Receiver<Msg>, usize)>,
) -> Result<(), WriteFail> {
    let mut iov: Vec<IoSlice<'_>> = Vec::new();
    while pos.idx < items.len() {
        if items[pos.idx].len() == pos.off {
            pos.idx += 1;
            pos.off = 0;
            continue;
        }
        iov.clear();
        iov.push(IoSlice::new(&items[pos.idx][pos.off..]));
        iov.extend(
            items[pos.idx + 1..]
                .iter()
                .take(MAX_IOV - 1)
                .map(|b| IoSlice::new(b)),
        );
        match wr.try_write_vectored(&iov) {
            Ok(0) => return Err(WriteFail::Io),
            Ok(mut n) => {
                while n > 0 {
                    let rest = items[pos.idx].len() - pos.off;
                    if n >= rest {
                        n -= rest;
                        pos.idx += 1;
                        pos.off = 0;
                    } else {
                        pos.off += n;
                        n = 0;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => match lag {
                Some((rx, limit)) => {
                    if rx.len() > limit {
                        return Err(WriteFail::Lagged);
                    }
                    tokio::select! {
                        r = wr.writable() => r.map_err(|_| WriteFail::Io)?,
                        _ = tokio::time::sleep(LAG_CHECK) => {}
                    }
                }
                None => wr.writable().await.map_err(|_| WriteFail::Io)?,
            },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(WriteFail::Io),
        }
    }
    Ok(())
}

fn config() -> Result<Config, String> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let config = Config {
        listen: env_listen()?,
        threads: env_int("RINGFAN_THREADS", cores as u64, 1, 1024)? as usize,
        echo: env_echo()?,
        max_frame_bytes: env_max_frame_bytes()?,
        channel_capacity: env_int("TOKIO_FANOUT_CHANNEL_CAPACITY", 65536, 1, 1 << 24)? as usize,
    };
    for name in [
        "RINGFAN_SEND_QUEUE_BYTES_MAX",
        "RINGFAN_PIN",
        "RINGFAN_READ_BUDGET_BYTES",
        "RINGFAN_RECV_BUFFERS",
        "RINGFAN_RECV_BUFFER_BYTES",
        "RINGFAN_RING_ENTRIES",
    ] {
        if std::env::var_os(name).is_some() {
            eprintln!("tokio-fanout: note: {name} does not apply to this baseline; ignored");
        }
    }
    Ok(config)
}

fn env_var(name: &str) -> Result<Option<String>, String> {
    match std::env::var_os(name) {
        None => Ok(None),
        Some(v) => v
            .into_string()
            .map(Some)
            .map_err(|v| format!("invalid {name}={v:?}: not UTF-8")),
    }
}

fn invalid(name: &str, v: &str, accepted: &str) -> String {
    format!("invalid {name}={v:?}: expected {accepted}")
}

fn env_listen() -> Result<SocketAddr, String> {
    Ok(match env_var("RINGFAN_LISTEN")? {
        None => "127.0.0.1:7000".parse().expect("default address parses"),
        Some(v) => v
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| {
                invalid(
                    "RINGFAN_LISTEN",
                    &v,
                    "host:port, e.g. 127.0.0.1:7000, 0.0.0.0:7000 or [::1]:7000",
                )
            })?,
    })
}

fn env_int(name: &str, default: u64, min: u64, max: u64) -> Result<u64, String> {
    match env_var(name)? {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| invalid(name, &v, &format!("an integer from {min} to {max}"))),
    }
}

fn env_echo() -> Result<bool, String> {
    match env_var("RINGFAN_ECHO")? {
        None => Ok(false),
        Some(v) => match v.trim() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(invalid(
                "RINGFAN_ECHO",
                &v,
                "0 or 1 (also true/false, yes/no, on/off)",
            )),
        },
    }
}

fn env_max_frame_bytes() -> Result<usize, String> {
    Ok(match env_var("RINGFAN_MAX_FRAME_BYTES")? {
        None => 65536,
        Some(v) => ringfan::config::parse_bytes(&v)
            .filter(|n| (2..=1 << 30).contains(n))
            .ok_or_else(|| {
                invalid(
                    "RINGFAN_MAX_FRAME_BYTES",
                    &v,
                    "a byte count from 2 to 1073741824 (e.g. 65536, 64KiB, 4MiB)",
                )
            })?,
    })
}

//! Load generator for `benchmarks/echo.py`.
//!
//! Opens `--conns` TCP connections to an echo server and runs request/response
//! ping-pong on each: send `--size` bytes, read until the same `--size` bytes
//! came back, check them, send the next request.  Single-threaded over mio
//! (epoll), with one write and one read per round trip and no work of its
//! own beyond a memcmp, so that nearly all its CPU is the kernel's TCP work
//! and the Python server, not the client, is the bottleneck; the report
//! includes the client's own CPU use (user and system) to show it.
//!
//! Two modes:
//!
//! * `--duration SECS [--warmup SECS]`: run for warm-up + duration and count
//!   the round trips completed inside the measured window.  With
//!   `--server-pid PID` it also reads the server's CPU time (utime + stime
//!   from /proc/PID/stat) at the exact window edges.
//! * `--requests N [--warmup-requests K]`: every connection does K warm-up
//!   round trips and then its share of N (N is the total over all
//!   connections), then closes.  Used for the callgrind runs, where only the
//!   server's instruction count matters.
//!
//! `--gap-us MICROS` makes each connection wait that long between an echo
//! and its next request.  Under callgrind the server runs ~50x slower than
//! the client, so without a gap the next request is always already there
//! when the server asks for it; a gap longer than the server's work makes
//! it wait in epoll for every request, as a real ping-pong does.
//!
//! Every request carries its connection and round number in its first and
//! last 8 bytes, and the echo must match the request byte for byte: a server
//! that drops, duplicates, reorders or replays data fails the run.
//!
//! Output: one JSON line on stdout.  Exit status 1 on any error (connection
//! refused or reset, wrong echo, no progress for `--stall-timeout` seconds),
//! with `{"error": "..."}` on stdout and the message on stderr.

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::exit;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: echo_client --addr HOST:PORT [--conns N] [--size BYTES] \
(--duration SECS [--warmup SECS] | --requests N [--warmup-requests K]) \
[--gap-us MICROS] [--server-pid PID] [--stall-timeout SECS]";

struct Args {
    addr: SocketAddr,
    conns: usize,
    size: usize,
    duration: Option<f64>,
    warmup: f64,
    requests: Option<u64>,
    warmup_requests: u64,
    server_pid: Option<u32>,
    stall_timeout: f64,
    gap: Duration,
}

fn fail(message: &str) -> ! {
    eprintln!("echo_client: {message}");
    println!("{{\"error\": {}}}", json_string(message));
    exit(1);
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn parse_args() -> Args {
    let mut addr = None;
    let mut args = Args {
        addr: "127.0.0.1:0".parse().unwrap(),
        conns: 1,
        size: 1024,
        duration: None,
        warmup: 1.0,
        requests: None,
        warmup_requests: 0,
        server_pid: None,
        stall_timeout: 10.0,
        gap: Duration::ZERO,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let flag = argv[i].as_str();
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            exit(0);
        }
        let value = argv.get(i + 1).unwrap_or_else(|| fail(&format!("{flag} needs a value\n{USAGE}")));
        let bad = || -> ! { fail(&format!("bad value for {flag}: {value:?}")) };
        match flag {
            "--addr" => {
                addr = Some(
                    value
                        .to_socket_addrs()
                        .ok()
                        .and_then(|mut a| a.next())
                        .unwrap_or_else(|| bad()),
                )
            }
            "--conns" => args.conns = value.parse().unwrap_or_else(|_| bad()),
            "--size" => args.size = value.parse().unwrap_or_else(|_| bad()),
            "--duration" => args.duration = Some(value.parse().unwrap_or_else(|_| bad())),
            "--warmup" => args.warmup = value.parse().unwrap_or_else(|_| bad()),
            "--requests" => args.requests = Some(value.parse().unwrap_or_else(|_| bad())),
            "--warmup-requests" => args.warmup_requests = value.parse().unwrap_or_else(|_| bad()),
            "--server-pid" => args.server_pid = Some(value.parse().unwrap_or_else(|_| bad())),
            "--stall-timeout" => args.stall_timeout = value.parse().unwrap_or_else(|_| bad()),
            "--gap-us" => args.gap = Duration::from_micros(value.parse().unwrap_or_else(|_| bad())),
            _ => fail(&format!("unknown option {flag}\n{USAGE}")),
        }
        i += 2;
    }
    args.addr = addr.unwrap_or_else(|| fail(&format!("--addr is required\n{USAGE}")));
    if args.conns == 0 || args.size == 0 {
        fail("--conns and --size must be positive");
    }
    match (args.duration, args.requests) {
        (Some(d), None) if d > 0.0 && args.warmup >= 0.0 => {}
        (None, Some(n)) if n >= args.conns as u64 => {}
        _ => fail(&format!(
            "give either --duration SECS (> 0) or --requests N (>= --conns)\n{USAGE}"
        )),
    }
    args
}

/// CPU seconds (user, system) this process has used so far.
fn self_cpu_s() -> (f64, f64) {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into the struct we pass.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        fail("getrusage failed");
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    (tv(usage.ru_utime), tv(usage.ru_stime))
}

/// CPU seconds (utime, stime; all threads) of process `pid`, from /proc.
fn proc_cpu_s(pid: u32) -> (f64, f64) {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| fail(&format!("cannot read {path} (server gone?): {e}")));
    // The command name (field 2) may contain spaces and parentheses: split
    // after its closing parenthesis.  Then field 3 (state) has index 0, so
    // utime (field 14) is index 11 and stime (field 15) index 12.
    let rest = &text[text.rfind(')').unwrap_or_else(|| fail("bad /proc stat")) + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> f64 {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or_else(|| fail("bad /proc stat")) as f64
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) / hz, ticks(12) / hz)
}

struct Conn {
    stream: TcpStream,
    id: u64,
    send: Vec<u8>,
    recv: Vec<u8>,
    sent: usize,
    rcvd: usize,
    /// Round trips completed on this connection.
    rounds: u64,
    /// Stop after this many round trips (count mode); u64::MAX otherwise.
    quota: u64,
    /// A request is in flight.
    busy: bool,
    /// Waiting out `--gap-us` before its next request.
    wake_at: Option<Instant>,
    /// Registered for writability too: only while a write has blocked, so
    /// that the ACKs of small requests do not wake the client up.
    want_write: bool,
}

impl Conn {
    fn start_round(&mut self) {
        // Stamp the request so that a stale or misrouted echo cannot match.
        let stamp = (self.id << 40 | self.rounds).to_le_bytes();
        let n = self.send.len();
        for (i, b) in stamp.iter().enumerate() {
            self.send[i % n] = *b;
            self.send[n - 1 - (i % n)] = *b;
        }
        self.sent = 0;
        self.rcvd = 0;
        self.busy = true;
    }

    /// Write and read as far as the socket allows, until the request in
    /// flight completes (returns true: the echo arrived and matched) or the
    /// socket would block both ways (returns false).  `fresh`: the request
    /// has just started, so skip the first read, which could only fail with
    /// EAGAIN (the readable event will come: epoll queues one for every
    /// arrival, edge-triggered or not).
    fn pump(&mut self, registry: &Registry, mut fresh: bool) -> Result<bool, String> {
        let size = self.send.len();
        while self.busy {
            let mut progress = false;
            if self.sent < size {
                match self.stream.write(&self.send[self.sent..]) {
                    Ok(0) => return Err(self.describe("write returned 0")),
                    Ok(n) => {
                        self.sent += n;
                        progress = true;
                        if self.sent == size && self.want_write {
                            self.interest(registry, false)?;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if !self.want_write {
                            self.interest(registry, true)?;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(e) => return Err(self.describe(&format!("write failed: {e}"))),
                }
            }
            if fresh {
                fresh = false;
                if self.sent == size {
                    break;
                }
            } else if self.rcvd < size {
                match self.stream.read(&mut self.recv[self.rcvd..]) {
                    Ok(0) => return Err(self.describe("server closed the connection")),
                    Ok(n) => {
                        self.rcvd += n;
                        progress = true;
                        if self.rcvd > self.sent {
                            return Err(self.describe("received more bytes than were sent"));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(e) => return Err(self.describe(&format!("read failed: {e}"))),
                }
            }
            if self.rcvd == size {
                if self.recv != self.send {
                    let at = self.recv.iter().zip(&self.send).position(|(a, b)| a != b).unwrap_or(0);
                    return Err(self.describe(&format!("echo differs from the request at byte {at}")));
                }
                self.busy = false;
                self.rounds += 1;
                return Ok(true);
            }
            if !progress {
                break;
            }
        }
        Ok(false)
    }

    fn interest(&mut self, registry: &Registry, write: bool) -> Result<(), String> {
        let interest = if write { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        registry
            .reregister(&mut self.stream, Token(self.id as usize), interest)
            .map_err(|e| self.describe(&format!("epoll_ctl: {e}")))?;
        self.want_write = write;
        Ok(())
    }

    fn describe(&self, what: &str) -> String {
        format!(
            "connection {} round {}: {what} (sent {} of {}, received {})",
            self.id,
            self.rounds,
            self.sent,
            self.send.len(),
            self.rcvd
        )
    }
}

/// Counters at one edge of the measured window.
struct Snapshot {
    at: Instant,
    total: u64,
    per_conn: Vec<u64>,
    client_cpu: (f64, f64),
    server_cpu: Option<(f64, f64)>,
}

fn snapshot(conns: &[Conn], total: u64, server_pid: Option<u32>) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        total,
        per_conn: conns.iter().map(|c| c.rounds).collect(),
        client_cpu: self_cpu_s(),
        server_cpu: server_pid.map(proc_cpu_s),
    }
}

struct Window {
    start: Option<Snapshot>,
    end: Option<Snapshot>,
}

/// When the measured window opens and closes.
struct Edges {
    count_mode: bool,
    warmup_end: Instant,
    warmup_total: u64,
    duration: Option<Duration>,
    server_pid: Option<u32>,
    /// Pause between a connection's echo and its next request.
    gap: Duration,
}

impl Edges {
    /// Open or close the window if its edge has been reached; closing it in
    /// duration mode stops new requests (`more = false`).
    fn check(&self, window: &mut Window, total: u64, conns: &[Conn], more: &mut bool) {
        let now = Instant::now();
        if window.start.is_none() {
            let due = if self.count_mode { total >= self.warmup_total } else { now >= self.warmup_end };
            if due {
                window.start = Some(snapshot(conns, total, self.server_pid));
            }
        }
        if let (Some(start), None) = (&window.start, &window.end) {
            let due = match self.duration {
                Some(d) => now >= start.at + d,
                None => conns.iter().all(|c| c.rounds >= c.quota),
            };
            if due {
                window.end = Some(snapshot(conns, total, self.server_pid));
                *more = false;
            }
        }
    }
}

/// Run connection `i` as far as its socket allows: every completed round
/// trip is counted and may open or close the window, and the next request
/// starts at once unless the window closed or the quota is reached.
fn drive(
    registry: &Registry,
    i: usize,
    conns: &mut [Conn],
    total: &mut u64,
    window: &mut Window,
    edges: &Edges,
    more: &mut bool,
    mut fresh: bool,
) {
    loop {
        let result = conns[i].pump(registry, fresh);
        fresh = true;
        match result {
            Ok(true) => {
                *total += 1;
                edges.check(window, *total, conns, more);
                let c = &mut conns[i];
                if !(*more && c.rounds < c.quota) {
                    return;
                }
                if !edges.gap.is_zero() {
                    c.wake_at = Some(Instant::now() + edges.gap);
                    return;
                }
                c.start_round();
            }
            Ok(false) => return,
            Err(e) => fail(&e),
        }
    }
}

fn connect(addr: SocketAddr, id: u64, size: usize, quota: u64) -> Conn {
    let std_stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(30))
        .unwrap_or_else(|e| fail(&format!("connection {id}: connect to {addr} failed: {e}")));
    std_stream.set_nodelay(true).unwrap_or_else(|e| fail(&format!("TCP_NODELAY: {e}")));
    std_stream.set_nonblocking(true).unwrap_or_else(|e| fail(&format!("O_NONBLOCK: {e}")));
    // A fixed, non-trivial pattern; the stamps vary it per request.
    let send: Vec<u8> = (0..size).map(|i| (i * 131 + id as usize * 7) as u8).collect();
    Conn {
        stream: TcpStream::from_std(std_stream),
        id,
        recv: vec![0; size],
        send,
        sent: 0,
        rcvd: 0,
        rounds: 0,
        quota,
        busy: false,
        wake_at: None,
        want_write: false,
    }
}

fn main() {
    let args = parse_args();
    let count_mode = args.requests.is_some();
    let quotas: Vec<u64> = (0..args.conns as u64)
        .map(|i| match args.requests {
            // Spread N over the connections; the first N % conns get one more.
            Some(n) => {
                let c = args.conns as u64;
                args.warmup_requests + n / c + u64::from(i < n % c)
            }
            None => u64::MAX,
        })
        .collect();
    let mut conns: Vec<Conn> = (0..args.conns)
        .map(|i| connect(args.addr, i as u64, args.size, quotas[i]))
        .collect();

    let mut poll = Poll::new().unwrap_or_else(|e| fail(&format!("epoll: {e}")));
    for (i, c) in conns.iter_mut().enumerate() {
        poll.registry()
            .register(&mut c.stream, Token(i), Interest::READABLE)
            .unwrap_or_else(|e| fail(&format!("register: {e}")));
    }
    let mut events = Events::with_capacity(1024);

    let started = Instant::now();
    let warmup_end = started + Duration::from_secs_f64(args.warmup);
    let warmup_total = args.warmup_requests * args.conns as u64;
    let stall = Duration::from_secs_f64(args.stall_timeout);
    let mut total: u64 = 0;
    let mut last_progress = Instant::now();
    let mut window = Window { start: None, end: None };
    // Duration mode: start no new request once the window has closed.
    let mut more = true;
    let edges = Edges {
        count_mode,
        warmup_end,
        warmup_total,
        duration: args.duration.map(Duration::from_secs_f64),
        server_pid: args.server_pid,
        gap: args.gap,
    };

    edges.check(&mut window, total, &conns, &mut more);
    for i in 0..conns.len() {
        conns[i].start_round();
        drive(poll.registry(), i, &mut conns, &mut total, &mut window, &edges, &mut more, true);
    }

    while conns.iter().any(|c| c.busy || c.wake_at.is_some()) {
        // Wake up in time for the next window edge and the stall check.
        let mut timeout = Duration::from_millis(100);
        if !count_mode && window.end.is_none() {
            let now = Instant::now();
            let edge = match &window.start {
                None => warmup_end,
                Some(s) => s.at + edges.duration.unwrap(),
            };
            timeout = timeout.min(edge.saturating_duration_since(now));
        }
        if let Some(wake) = conns.iter().filter_map(|c| c.wake_at).min() {
            timeout = timeout.min(wake.saturating_duration_since(Instant::now()));
        }
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                fail(&format!("epoll_wait: {e}"));
            }
        }
        let before = total;
        for event in events.iter() {
            let registry = poll.registry();
            drive(registry, event.token().0, &mut conns, &mut total, &mut window, &edges, &mut more, false);
        }
        if !edges.gap.is_zero() {
            let now = Instant::now();
            for i in 0..conns.len() {
                match conns[i].wake_at {
                    Some(at) if at <= now => {
                        conns[i].wake_at = None;
                        if more {
                            conns[i].start_round();
                            drive(poll.registry(), i, &mut conns, &mut total, &mut window, &edges, &mut more, true);
                        }
                    }
                    _ => {}
                }
            }
        }
        if total != before || conns.iter().any(|c| c.wake_at.is_some()) {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > stall {
            let stuck: Vec<String> = conns
                .iter()
                .filter(|c| c.busy)
                .take(5)
                .map(|c| c.describe("waiting"))
                .collect();
            fail(&format!(
                "no round trip completed for {:.0} s ({} done); stuck: {}",
                args.stall_timeout,
                total,
                stuck.join("; ")
            ));
        }
        edges.check(&mut window, total, &conns, &mut more);
    }
    let wall = started.elapsed().as_secs_f64();
    // Close cleanly (FIN, not RST: nothing is left unread), so the server
    // sees EOF on every connection.
    for c in conns.iter_mut() {
        let _ = poll.registry().deregister(&mut c.stream);
        let _ = c.stream.shutdown(std::net::Shutdown::Write);
    }
    drop(conns);

    let (start, end) = match (window.start, window.end) {
        (Some(s), Some(e)) => (s, e),
        _ => fail("measurement window never closed"),
    };
    let requests = end.total - start.total;
    let secs = (end.at - start.at).as_secs_f64();
    let per_conn: Vec<u64> = end.per_conn.iter().zip(&start.per_conn).map(|(e, s)| e - s).collect();
    // "<who>_cpu_s" (user + system), its user and system parts, the share of
    // one core over the window, and the CPU per round trip.
    let cpu_fields = |who: &str, span: Option<((f64, f64), (f64, f64))>| -> String {
        match span {
            Some(((u0, s0), (u1, s1))) => {
                let (user, sys) = (u1 - u0, s1 - s0);
                let per_req = if requests > 0 { (user + sys) / requests as f64 * 1e6 } else { 0.0 };
                format!(
                    "\"{who}_cpu_s\": {:.4}, \"{who}_user_s\": {user:.4}, \"{who}_sys_s\": {sys:.4}, \
                     \"{who}_cpu_pct\": {:.1}, \"{who}_cpu_us_per_req\": {per_req:.3}",
                    user + sys,
                    (user + sys) / secs * 100.0
                )
            }
            None => format!(
                "\"{who}_cpu_s\": null, \"{who}_user_s\": null, \"{who}_sys_s\": null, \
                 \"{who}_cpu_pct\": null, \"{who}_cpu_us_per_req\": null"
            ),
        }
    };
    let client = cpu_fields("client", Some((start.client_cpu, end.client_cpu)));
    let server = cpu_fields("server", start.server_cpu.zip(end.server_cpu));
    println!(
        "{{\"conns\": {}, \"size\": {}, \"mode\": \"{}\", \"requests\": {requests}, \
         \"total_requests\": {total}, \"window_s\": {secs:.6}, \"wall_s\": {wall:.3}, \
         \"req_per_s\": {:.1}, \"conn_min\": {}, \"conn_max\": {}, {client}, {server}}}",
        args.conns,
        args.size,
        if count_mode { "requests" } else { "duration" },
        requests as f64 / secs,
        per_conn.iter().min().unwrap(),
        per_conn.iter().max().unwrap(),
    );
}

//! The access log: one line per request (target `access`), formatted by hand into a buffer and
//! written to stderr by size, every [`FLUSH_EVERY`] and at shutdown.
//!
//! The lines are those tracing-subscriber's formatter writes for the same event (text or
//! JSON, `[log] format`; text without colours), and they still follow `[log] level` /
//! `RUST_LOG` (`access=off` silences them); everything else the gateway logs goes through the
//! one tracing subscriber as before. Why by hand: the formatter visited ten fields through
//! `fmt::Debug`, formatted a fresh timestamp and made one `write` per line, which was 8 % of
//! the CPU of a proxied request (`benches/README.md`).
//!
//! The price: a `kill -9` loses at most the lines of the last [`FLUSH_EVERY`], and an access
//! line may appear up to that long after a log line of the same request.
//!
//! Before [`install`] (the library used in-process, as by tests) lines go through tracing.

use crate::config::LogFormat;
use std::io::Write;
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// The buffer is written out when it holds this much.
const FLUSH_AT: usize = 32 * 1024;

/// One request's access line. `-` and 0 stand for "none", as in the README's table.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub merchant: &'a str,
    pub client: &'a str,
    pub request_id: &'a str,
    pub upstream_status: u16,
    pub duration_us: u64,
    pub gateway_us: u64,
    pub replayed: bool,
    pub error: &'a str,
}

impl Default for Line<'_> {
    fn default() -> Self {
        Line {
            method: "-",
            path: "-",
            status: 0,
            merchant: "-",
            client: "-",
            request_id: "-",
            upstream_status: 0,
            duration_us: 0,
            gateway_us: 0,
            replayed: false,
            error: "-",
        }
    }
}

struct Writer {
    format: LogFormat,
    inner: Mutex<Inner>,
    flusher: Once,
}

struct Inner {
    buf: Vec<u8>,
    /// The second [`Inner::stamp`] was formatted for.
    second: u64,
    /// `YYYY-MM-DDTHH:MM:SS`.
    stamp: [u8; 19],
}

static WRITER: OnceLock<Writer> = OnceLock::new();

/// Routes access lines to the buffered writer, in `format` (the process's `[log] format`).
pub fn install(format: LogFormat) {
    let _ = WRITER.set(Writer {
        format,
        inner: Mutex::new(Inner {
            buf: Vec::with_capacity(FLUSH_AT + 1024),
            second: u64::MAX,
            stamp: [b'0'; 19],
        }),
        flusher: Once::new(),
    });
}

/// Writes out what is buffered (at shutdown).
pub fn flush() {
    if let Some(w) = WRITER.get() {
        w.flush();
    }
}

/// Logs one access line, when `[log] level` lets target `access` through at INFO.
pub fn log(line: &Line) {
    if !tracing::enabled!(target: "access", tracing::Level::INFO) {
        return;
    }
    match WRITER.get() {
        Some(w) => w.write(line),
        None => tracing::info!(
            target: "access",
            method = %line.method,
            path = line.path,
            status = line.status,
            merchant = line.merchant,
            client = line.client,
            request_id = line.request_id,
            upstream_status = line.upstream_status,
            duration_us = line.duration_us,
            gateway_us = line.gateway_us,
            replayed = line.replayed,
            error = line.error,
        ),
    }
}

impl Writer {
    fn write(&self, line: &Line) {
        // The flusher thread starts with the first line: after pingora's fork, if it forks.
        self.flusher.call_once(|| {
            let _ = std::thread::Builder::new()
                .name("access-log".into())
                .spawn(|| loop {
                    std::thread::sleep(FLUSH_EVERY);
                    flush();
                });
        });
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Inner { buf, second, stamp } = &mut *inner;
        if *second != now.as_secs() {
            *second = now.as_secs();
            *stamp = civil_stamp(now.as_secs());
        }
        let micros = now.subsec_micros();
        match self.format {
            LogFormat::Text => text(buf, stamp, micros, line),
            LogFormat::Json => json(buf, stamp, micros, line),
        }
        if buf.len() >= FLUSH_AT {
            write_out(buf);
        }
    }

    fn flush(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !inner.buf.is_empty() {
            write_out(&mut inner.buf);
        }
    }
}

/// One `write` for the whole buffer when stderr takes it (errors ignored, as tracing does).
fn write_out(buf: &mut Vec<u8>) {
    let _ = std::io::stderr().lock().write_all(buf);
    buf.clear();
}

/// tracing-subscriber's `Full` text format: `<time>  INFO access: k=v …`, `&str` values
/// through `Debug` (quoted, escaped), the method through `Display`.
fn text(buf: &mut Vec<u8>, stamp: &[u8; 19], micros: u32, l: &Line) {
    buf.extend_from_slice(stamp);
    let _ = write!(buf, ".{micros:06}Z  INFO access: method={}", l.method);
    let mut n = itoa::Buffer::new();
    buf.extend_from_slice(b" path=");
    debug_str(buf, l.path);
    buf.extend_from_slice(b" status=");
    buf.extend_from_slice(n.format(l.status).as_bytes());
    for (key, value) in [
        (&b" merchant="[..], l.merchant),
        (b" client=", l.client),
        (b" request_id=", l.request_id),
    ] {
        buf.extend_from_slice(key);
        debug_str(buf, value);
    }
    for (key, value) in [
        (&b" upstream_status="[..], u64::from(l.upstream_status)),
        (b" duration_us=", l.duration_us),
        (b" gateway_us=", l.gateway_us),
    ] {
        buf.extend_from_slice(key);
        buf.extend_from_slice(n.format(value).as_bytes());
    }
    buf.extend_from_slice(if l.replayed {
        b" replayed=true error="
    } else {
        b" replayed=false error="
    });
    debug_str(buf, l.error);
    buf.push(b'\n');
}

/// `s` as `fmt::Debug` writes it (quoted, escaped); without a `fmt` call when nothing in it
/// needs escaping (printable ASCII but `"` and `\\`), as almost every value is.
fn debug_str(buf: &mut Vec<u8>, s: &str) {
    if plain(s) {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        let _ = write!(buf, "{s:?}");
    }
}

/// tracing-subscriber's JSON format: `{"timestamp":…,"level":"INFO","fields":{…},"target":"access"}`.
fn json(buf: &mut Vec<u8>, stamp: &[u8; 19], micros: u32, l: &Line) {
    buf.extend_from_slice(b"{\"timestamp\":\"");
    buf.extend_from_slice(stamp);
    let _ = write!(buf, ".{micros:06}Z\",\"level\":\"INFO\",\"fields\":{{");
    let strings = [("method", l.method), ("path", l.path)];
    for (i, (key, value)) in strings.into_iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        json_pair(buf, key, value);
    }
    let _ = write!(buf, ",\"status\":{}", l.status);
    for (key, value) in [
        ("merchant", l.merchant),
        ("client", l.client),
        ("request_id", l.request_id),
    ] {
        buf.push(b',');
        json_pair(buf, key, value);
    }
    let _ = write!(
        buf,
        ",\"upstream_status\":{},\"duration_us\":{},\"gateway_us\":{},\"replayed\":{},",
        l.upstream_status, l.duration_us, l.gateway_us, l.replayed
    );
    json_pair(buf, "error", l.error);
    buf.extend_from_slice(b"},\"target\":\"access\"}\n");
}

fn json_pair(buf: &mut Vec<u8>, key: &str, value: &str) {
    buf.push(b'"');
    buf.extend_from_slice(key.as_bytes());
    buf.extend_from_slice(b"\":");
    if plain(value) {
        buf.push(b'"');
        buf.extend_from_slice(value.as_bytes());
        buf.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *buf, value);
    }
}

/// Printable ASCII but `"` and `\\`: written as it is, quoted, by both formats.
fn plain(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of a Unix time, as tracing-subscriber prints it.
fn civil_stamp(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let mut out = [0u8; 19];
    let s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    out.copy_from_slice(&s.as_bytes()[..19]);
    out
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 → (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tracing_subscriber::fmt::MakeWriter;

    /// A `MakeWriter` into a shared buffer.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    fn odd_line() -> Line<'static> {
        Line {
            method: "PATCH",
            path: "/v2/payments/tr_\"x\\y\u{7f}é",
            status: 201,
            merchant: "m\"1",
            client: "billing",
            request_id: "5f0c-\t",
            upstream_status: 401,
            duration_us: 10_847,
            gateway_us: 39,
            replayed: true,
            error: "-",
        }
    }

    /// What tracing-subscriber writes for the line, through the tracing fallback of [`log`].
    fn through_tracing(format: LogFormat, line: &Line) -> String {
        let capture = Capture::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(capture.clone())
            .with_ansi(false);
        let dispatch = match format {
            LogFormat::Text => tracing::Dispatch::new(builder.finish()),
            LogFormat::Json => tracing::Dispatch::new(builder.json().finish()),
        };
        tracing::dispatcher::with_default(&dispatch, || log(line));
        let out = capture.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    fn by_hand(format: LogFormat, line: &Line, secs: u64, micros: u32) -> String {
        let mut buf = Vec::new();
        let stamp = civil_stamp(secs);
        match format {
            LogFormat::Text => text(&mut buf, &stamp, micros, line),
            LogFormat::Json => json(&mut buf, &stamp, micros, line),
        }
        String::from_utf8(buf).unwrap()
    }

    /// The timestamp of a line from tracing, as (Unix seconds, micros), and the rest.
    fn split_stamp(line: &str, format: LogFormat) -> (String, String) {
        let start = match format {
            LogFormat::Text => 0,
            LogFormat::Json => line.find("\"timestamp\":\"").unwrap() + 13,
        };
        let stamp = line[start..start + 27].to_string();
        let rest = format!("{}{}", &line[..start], &line[start + 27..]);
        (stamp, rest)
    }

    #[test]
    fn lines_are_the_ones_tracing_subscriber_writes() {
        for format in [LogFormat::Text, LogFormat::Json] {
            for line in [odd_line(), Line::default()] {
                let theirs = through_tracing(format, &line);
                let (their_stamp, their_rest) = split_stamp(&theirs, format);
                let ours = by_hand(format, &line, 1_764_174_000, 123_456);
                let (our_stamp, our_rest) = split_stamp(&ours, format);
                assert_eq!(our_rest, their_rest, "{format:?}");
                assert_eq!(our_stamp, "2025-11-26T16:20:00.123456Z");
                assert_eq!(their_stamp.len(), our_stamp.len(), "{their_stamp}");
                assert!(their_stamp.ends_with('Z') && their_stamp.as_bytes()[10] == b'T');
            }
        }
    }

    #[test]
    fn json_lines_parse_with_every_field() {
        let out = by_hand(LogFormat::Json, &odd_line(), 0, 7);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000007Z");
        assert_eq!(v["target"], "access");
        assert_eq!(v["fields"]["path"], "/v2/payments/tr_\"x\\y\u{7f}é");
        assert_eq!(v["fields"]["merchant"], "m\"1");
        assert_eq!(v["fields"]["status"], 201);
        assert_eq!(v["fields"]["replayed"], true);
        assert!(out.ends_with("}\n") && out.matches('\n').count() == 1);
    }

    #[test]
    fn civil_dates_match_known_days() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_709_251_199, "2024-02-29T23:59:59"),
            (4_102_444_800, "2100-01-01T00:00:00"),
            (1_798_761_599, "2026-12-31T23:59:59"),
        ] {
            assert_eq!(std::str::from_utf8(&civil_stamp(secs)).unwrap(), want);
        }
    }
}

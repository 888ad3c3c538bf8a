//! Just enough HTTP/1.1 for the attacks: write raw request bytes over a TCP connection (so a
//! request can stop in the middle on purpose) and read what the server answers, if anything.
//! The response parser is a pure function over the bytes received so far.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Largest response head accepted (the server's are a few hundred bytes).
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// A parsed response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// `Content-Length`, when given.
    pub content_length: Option<usize>,
    /// Bytes of the head, up to and including the blank line.
    pub len: usize,
}

/// Why bytes are not a response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The status line is not `HTTP/1.x NNN ...`.
    #[error("not an HTTP/1.x status line")]
    StatusLine,
    /// A `Content-Length` that is not a number.
    #[error("bad content-length")]
    ContentLength,
    /// No blank line within the first 16 KiB.
    #[error("response head over {MAX_HEAD_BYTES} bytes")]
    TooLong,
}

/// Parses a response head from the bytes received so far: `Ok(None)` while it is incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, ParseError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD_BYTES {
            Err(ParseError::TooLong)
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| ParseError::StatusLine)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut words = status_line.split(' ');
    let version = words.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(ParseError::StatusLine);
    }
    let status = words
        .next()
        .filter(|code| code.len() == 3)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or(ParseError::StatusLine)?;
    let mut content_length = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            content_length = Some(
                value
                    .trim()
                    .parse()
                    .map_err(|_| ParseError::ContentLength)?,
            );
        }
    }
    Ok(Some(Head {
        status,
        content_length,
        len: end + 4,
    }))
}

/// How a connection the benchmark wrote to ended, from its side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The server answered with this status.
    Answered(u16),
    /// The server closed (EOF) without a complete answer.
    ClosedSilently,
    /// The connection was reset without a complete answer.
    Reset,
    /// Still open when the benchmark stopped waiting.
    StillOpen,
}

impl Ending {
    /// A short label for counting (`"401"`, `"closed without an answer"`, ...).
    pub fn label(&self) -> String {
        match self {
            Ending::Answered(status) => status.to_string(),
            Ending::ClosedSilently => "closed without an answer".to_owned(),
            Ending::Reset => "reset without an answer".to_owned(),
            Ending::StillOpen => "still open".to_owned(),
        }
    }
}

/// What one exchange produced.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// How it ended.
    pub ending: Ending,
    /// The response body (complete when `Content-Length` was given and reached).
    pub body: Vec<u8>,
    /// From the start of the wait to the ending (the wait's length for `StillOpen`).
    pub after: Duration,
}

/// Reads from `stream` until the server answers (a complete head, then its body up to
/// `Content-Length`), closes, resets, or `wait` passes.
pub async fn read_answer(stream: &mut TcpStream, wait: Duration) -> Exchange {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let ending = loop {
        let head = parse_head(&buf);
        if let Ok(Some(h)) = &head
            && h.content_length.is_none_or(|n| buf.len() >= h.len + n)
        {
            break Ending::Answered(h.status);
        }
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await;
        match read {
            Err(_) => break Ending::StillOpen,
            Ok(Ok(0)) | Ok(Err(_)) => {
                // A head without its whole body still counts as an answer.
                let eof = matches!(read, Ok(Ok(0)));
                break match head {
                    Ok(Some(h)) => Ending::Answered(h.status),
                    _ if eof => Ending::ClosedSilently,
                    _ => Ending::Reset,
                };
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let body = match parse_head(&buf) {
        Ok(Some(h)) => buf[h.len.min(buf.len())..].to_vec(),
        _ => Vec::new(),
    };
    Exchange {
        ending,
        body,
        after: started.elapsed(),
    }
}

/// One whole request on a fresh connection: connect, write `request`, read the answer within
/// `wait`. A failed connect or write is an error.
pub async fn exchange(
    addr: SocketAddr,
    request: &[u8],
    wait: Duration,
) -> std::io::Result<Exchange> {
    let connect = tokio::time::timeout(wait, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let mut stream = connect;
    stream.set_nodelay(true)?;
    stream.write_all(request).await?;
    Ok(read_answer(&mut stream, wait).await)
}

/// A request head (and body) with `Connection: close`.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    if !body.is_empty() || method == "POST" {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_once_complete() {
        let full = b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\nContent-Length: 26\r\n\r\n{\"error\":\"unauthorized\"}";
        let head = parse_head(full).unwrap().unwrap();
        assert_eq!(head.status, 401);
        assert_eq!(head.content_length, Some(26));
        assert_eq!(&full[head.len..head.len + 2], b"{\"");
        assert_eq!(parse_head(&full[..20]), Ok(None));
        let no_length = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n";
        assert_eq!(parse_head(no_length).unwrap().unwrap().content_length, None);
    }

    #[test]
    fn bad_heads_are_errors() {
        assert_eq!(
            parse_head(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(ParseError::StatusLine)
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 2000 OK\r\n\r\n"),
            Err(ParseError::StatusLine)
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: lots\r\n\r\n"),
            Err(ParseError::ContentLength)
        );
        assert_eq!(
            parse_head(&vec![b'a'; MAX_HEAD_BYTES + 1]),
            Err(ParseError::TooLong)
        );
    }

    #[test]
    fn requests_are_well_formed() {
        let r = request("GET", "/healthz", &[], b"");
        assert_eq!(
            r,
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        );
        let r = request("POST", "/api/x", &[("Authorization", "Bearer k")], b"{}");
        assert!(r.ends_with(b"Authorization: Bearer k\r\nContent-Length: 2\r\n\r\n{}"));
        assert_eq!(Ending::Answered(503).label(), "503");
        assert_eq!(Ending::StillOpen.label(), "still open");
    }
}

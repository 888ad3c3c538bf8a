//! The optional `Origin` check, with Phoenix's `check_origin` list semantics.
//!
//! Each allowed origin is `scheme://host[:port]`, `//host[:port]` (any scheme) or just a
//! host; a host may start with `*.` to allow the domain and all its subdomains. A scheme
//! without a port implies the scheme's default port (`https://x` allows only port 443). A
//! request without an `Origin` header (a native app, a server) is allowed; one whose origin has
//! no host (`null`, `file://`) is refused when a list is configured.

/// One allowed origin pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: Option<String>,
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

fn split_host_port(rest: &str) -> Option<(String, Option<u16>)> {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return None;
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => {
            Some((host.to_ascii_lowercase(), Some(port.parse().ok()?)))
        }
        Some(_) => None,
        None => Some((authority.to_ascii_lowercase(), None)),
    }
}

impl OriginPattern {
    /// Parses a pattern; `None` when it has no host.
    pub fn parse(pattern: &str) -> Option<OriginPattern> {
        let (scheme, rest) = if let Some((scheme, rest)) = pattern.split_once("://") {
            (Some(scheme.to_ascii_lowercase()), rest)
        } else if let Some(rest) = pattern.strip_prefix("//") {
            (None, rest)
        } else {
            (None, pattern)
        };
        let (host, port) = split_host_port(rest)?;
        let port = port.or_else(|| scheme.as_deref().and_then(default_port));
        let (host, wildcard) = match host.strip_prefix("*.") {
            Some(domain) => (domain.to_owned(), true),
            None => (host, false),
        };
        Some(OriginPattern {
            scheme,
            host,
            wildcard,
            port,
        })
    }

    fn allows(&self, origin: &Origin) -> bool {
        if self.scheme.as_ref().is_some_and(|s| *s != origin.scheme) {
            return false;
        }
        let origin_port = origin.port.or_else(|| default_port(&origin.scheme));
        if self.port.is_some() && self.port != origin_port {
            return false;
        }
        if self.wildcard {
            origin.host == self.host || origin.host.ends_with(&format!(".{}", self.host))
        } else {
            origin.host == self.host
        }
    }
}

fn parse_origin(origin: &str) -> Option<Origin> {
    let (scheme, rest) = origin.split_once("://")?;
    let (host, port) = split_host_port(rest)?;
    Some(Origin {
        scheme: scheme.to_ascii_lowercase(),
        host,
        port,
    })
}

/// True when `origin` (the header value, if any) passes the check. An empty pattern list
/// disables the check.
pub fn origin_allowed(patterns: &[OriginPattern], origin: Option<&str>) -> bool {
    if patterns.is_empty() {
        return true;
    }
    let Some(origin) = origin else {
        return true;
    };
    match parse_origin(origin) {
        Some(origin) => patterns.iter().any(|p| p.allows(&origin)),
        None => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    fn pats(list: &[&str]) -> Vec<OriginPattern> {
        list.iter()
            .filter_map(|p| OriginPattern::parse(p))
            .collect()
    }

    #[test]
    fn no_list_or_no_header_allows() {
        assert!(origin_allowed(&[], Some("https://evil.com")));
        assert!(origin_allowed(&pats(&["https://example.com"]), None));
    }

    #[test]
    fn scheme_implies_default_port() {
        let p = pats(&["http://scheme.com"]);
        assert!(origin_allowed(&p, Some("http://scheme.com")));
        assert!(origin_allowed(&p, Some("http://scheme.com/")));
        assert!(!origin_allowed(&p, Some("https://scheme.com")));
        assert!(!origin_allowed(&p, Some("http://scheme.com:8080")));
    }

    #[test]
    fn schemeless_and_wildcards() {
        let p = pats(&["//example.com", "//*.other.com", "//another.com:888"]);
        assert!(origin_allowed(&p, Some("http://example.com")));
        assert!(origin_allowed(&p, Some("https://example.com")));
        assert!(origin_allowed(&p, Some("https://other.com")));
        assert!(origin_allowed(&p, Some("https://a.b.other.com")));
        assert!(!origin_allowed(&p, Some("https://prefix-other.com")));
        assert!(origin_allowed(&p, Some("http://another.com:888")));
        assert!(!origin_allowed(&p, Some("http://another.com")));
    }

    #[test]
    fn hostless_origins_are_refused() {
        let p = pats(&["//example.com"]);
        assert!(!origin_allowed(&p, Some("null")));
        assert!(!origin_allowed(&p, Some("file://")));
        assert!(!origin_allowed(&p, Some("")));
    }
}

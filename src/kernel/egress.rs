//! Finding network destinations in argument strings, and classifying them.
//!
//! URLs are parsed as a browser would (the WHATWG rules of the `url` crate), so
//! every spelling a browser accepts for a host is seen as that host: upper case,
//! one trailing dot, internationalised names (turned into their ASCII form), and IP
//! literals in decimal, octal, hexadecimal and short forms, or as IPv4-mapped IPv6.
//! Strings are searched for URLs with a scheme and for bare hosts without one.
//!
//! What is refused whatever the policy's egress rules say, unless the policy names
//! the host in `egress.allow`: loopback, private, link-local, shared, unspecified,
//! multicast and cloud-metadata addresses (and the `localhost` names). What is
//! refused always: schemes other than http and https, and URLs that carry user
//! information.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use regex::Regex;
use url::{Host, Url};

/// A destination found in a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The host as the policy sees it: lowercase ASCII, no trailing dot, IP
    /// literals in their canonical form (IPv6 without brackets).
    pub host: String,
    /// What kind of address it is.
    pub class: AddressClass,
    /// A problem with the URL itself, if any.
    pub problem: Option<UrlProblem>,
    /// The text the destination was found in (the URL or host as written).
    pub found: String,
}

/// Address classes that matter to egress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// A host name (not an IP literal, not a local name).
    Name,
    /// A public IP address.
    Public,
    /// `127.0.0.0/8`, `::1`, `localhost`.
    Loopback,
    /// RFC 1918, unique-local IPv6, shared address space (RFC 6598).
    Private,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// Cloud instance metadata endpoints.
    Metadata,
    /// `0.0.0.0/8`, `::`, multicast and broadcast.
    Unroutable,
}

impl AddressClass {
    /// Whether the address must be allowed by name to be reached.
    pub fn is_internal(self) -> bool {
        !matches!(self, Self::Name | Self::Public)
    }

    /// A word for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Name => "host name",
            Self::Public => "public address",
            Self::Loopback => "loopback address",
            Self::Private => "private network address",
            Self::LinkLocal => "link-local address",
            Self::Metadata => "cloud metadata address",
            Self::Unroutable => "unroutable address",
        }
    }
}

/// What is wrong with a URL regardless of its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlProblem {
    /// A scheme other than http or https.
    Scheme(String),
    /// User name or password in the URL.
    UserInfo,
}

/// URLs with a scheme, as written.
static WITH_SCHEME: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?i)\b[a-z][a-z0-9+.\-]{1,15}://[^\s<>]+").ok());

/// Hosts without a scheme: dotted names, dotted numbers (any radix), bracketed
/// IPv6, `localhost`; optionally a port and a path.
static BARE_HOST: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(?:^|[\s(\[{,;=@'`])((?:\[[0-9a-f:.]+\]|localhost|(?:[a-z0-9_](?:[a-z0-9_\-]*[a-z0-9_])?\.)+(?:[a-z0-9\-]+|xn--[a-z0-9\-]+)|(?:0x[0-9a-f]+|\d+)(?:\.(?:0x[0-9a-f]+|\d+)){1,3})\.?(?::\d{1,5})?(?:[/?#][^\s<>]*)?)",
    )
    .ok()
});

/// The metadata endpoints of the common clouds.
const METADATA_V4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(169, 254, 169, 254), // AWS, GCP, Azure, OpenStack, ...
    Ipv4Addr::new(100, 100, 100, 200), // Alibaba Cloud
    Ipv4Addr::new(169, 254, 170, 2),   // AWS ECS task metadata
];

/// Names that reach a metadata service.
const METADATA_NAMES: [&str; 4] = [
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data.ec2.internal",
];

/// Every destination found in `text`.
pub fn destinations(text: &str) -> Vec<Destination> {
    let mut out: Vec<Destination> = Vec::new();
    let mut covered: Vec<(usize, usize)> = Vec::new();
    if let Some(re) = WITH_SCHEME.as_ref() {
        for m in re.find_iter(text) {
            covered.push((m.start(), m.end()));
            let raw = trim_trailing_punctuation(m.as_str());
            if let Some(d) = from_url_text(raw) {
                out.push(d);
            }
        }
    }
    if let Some(re) = BARE_HOST.as_ref() {
        for caps in re.captures_iter(text) {
            let Some(m) = caps.get(1) else { continue };
            if covered
                .iter()
                .any(|(s, e)| m.start() >= *s && m.start() < *e)
            {
                continue;
            }
            let raw = trim_trailing_punctuation(m.as_str());
            if !plausible_bare_host(raw) {
                continue;
            }
            if let Some(mut d) = from_url_text(&format!("http://{raw}")) {
                d.found = raw.to_owned();
                out.push(d);
            }
        }
    }
    out.dedup_by(|a, b| a.host == b.host && a.problem == b.problem);
    out
}

fn trim_trailing_punctuation(s: &str) -> &str {
    s.trim_end_matches(['.', ',', ';', ':', ')', ']', '}', '"', '\'', '!', '?', '`'])
}

/// A bare token that is only numbers and dots is a host when it is a full dotted
/// quad, or has a port or path; otherwise it reads as a version number.
fn plausible_bare_host(raw: &str) -> bool {
    let host_part = raw.split(['/', '?', '#']).next().unwrap_or(raw);
    let numeric = host_part.split(':').next().is_some_and(|h| {
        !h.is_empty()
            && h.split('.').all(|p| {
                !p.is_empty()
                    && (p.bytes().all(|b| b.is_ascii_digit())
                        || p.to_ascii_lowercase().starts_with("0x"))
            })
    });
    if !numeric {
        // A file name such as `notes.txt` is not a host: the last label must be
        // letters only (a top-level domain) or the name must carry a port or path.
        let name = host_part.split(':').next().unwrap_or("");
        let tld = name.rsplit('.').next().unwrap_or("");
        let has_more = raw.len() > name.len();
        return name.starts_with('[')
            || name.eq_ignore_ascii_case("localhost")
            || has_more
            || (tld.len() >= 2
                && tld.bytes().all(|b| b.is_ascii_alphabetic())
                && !looks_like_file_extension(tld));
    }
    let parts = host_part
        .split(':')
        .next()
        .map_or(0, |h| h.split('.').count());
    parts == 4 || raw.len() > host_part.split(':').next().map_or(0, str::len)
}

/// Extensions common in file names that are also unlikely to be what a bare host
/// ends with in arguments.
fn looks_like_file_extension(tld: &str) -> bool {
    const EXTENSIONS: [&str; 28] = [
        "txt", "md", "json", "yaml", "yml", "toml", "csv", "log", "py", "rs", "js", "ts", "go",
        "java", "rb", "sh", "html", "css", "xml", "pdf", "png", "jpg", "jpeg", "gif", "zip", "gz",
        "tar", "lock",
    ];
    EXTENSIONS.iter().any(|e| tld.eq_ignore_ascii_case(e))
}

fn from_url_text(raw: &str) -> Option<Destination> {
    let url = Url::parse(raw).ok()?;
    let scheme = url.scheme().to_ascii_lowercase();
    let mut problem = None;
    if scheme != "http" && scheme != "https" {
        problem = Some(UrlProblem::Scheme(scheme));
    } else if !url.username().is_empty() || url.password().is_some() {
        problem = Some(UrlProblem::UserInfo);
    }
    let (host, class) = match url.host() {
        Some(Host::Domain(d)) => {
            let name = d.strip_suffix('.').unwrap_or(d).to_ascii_lowercase();
            let class = classify_name(&name);
            (name, class)
        }
        Some(Host::Ipv4(ip)) => (ip.to_string(), classify_ip(IpAddr::V4(ip))),
        Some(Host::Ipv6(ip)) => (ip.to_string(), classify_ip(IpAddr::V6(ip))),
        None if problem.is_some() => (String::new(), AddressClass::Name),
        None => return None,
    };
    Some(Destination {
        host,
        class,
        problem,
        found: raw.to_owned(),
    })
}

fn classify_name(name: &str) -> AddressClass {
    if name == "localhost" || name.ends_with(".localhost") {
        AddressClass::Loopback
    } else if METADATA_NAMES.contains(&name) {
        AddressClass::Metadata
    } else {
        AddressClass::Name
    }
}

/// Classifies an IP address; IPv4 embedded in IPv6 (mapped, compatible, NAT64) is
/// classified as the IPv4 address it carries.
pub fn classify_ip(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return classify_v4(v4);
            }
            let seg = v6.segments();
            if v6.is_loopback() {
                AddressClass::Loopback
            } else if v6.is_unspecified() || v6.is_multicast() {
                AddressClass::Unroutable
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                AddressClass::Metadata
            } else if seg[0] & 0xfe00 == 0xfc00 {
                AddressClass::Private
            } else if seg[0] & 0xffc0 == 0xfe80 {
                AddressClass::LinkLocal
            } else {
                AddressClass::Public
            }
        }
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = v6.segments();
    let tail = Ipv4Addr::new(
        (seg[6] >> 8) as u8,
        seg[6] as u8,
        (seg[7] >> 8) as u8,
        seg[7] as u8,
    );
    // ::ffff:a.b.c.d (mapped), ::a.b.c.d (compatible, deprecated), 64:ff9b::a.b.c.d (NAT64).
    let mapped = seg[..5].iter().all(|s| *s == 0) && seg[5] == 0xffff;
    let compatible = seg[..6].iter().all(|s| *s == 0) && !(seg[6] == 0 && seg[7] <= 1);
    let nat64 = seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6].iter().all(|s| *s == 0);
    (mapped || compatible || nat64).then_some(tail)
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let o = ip.octets();
    if METADATA_V4.contains(&ip) {
        AddressClass::Metadata
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        AddressClass::Private
    } else if ip.is_link_local() {
        AddressClass::LinkLocal
    } else if o[0] == 0 || ip.is_multicast() || ip.is_broadcast() || o[0] >= 240 {
        AddressClass::Unroutable
    } else {
        AddressClass::Public
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Destination {
        let found = destinations(text);
        assert_eq!(found.len(), 1, "{text:?} -> {found:?}");
        found.into_iter().next().unwrap()
    }

    #[test]
    fn every_spelling_of_loopback_is_loopback() {
        for text in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://0x7f.0.0.1/",
            "http://127.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://LOCALHOST./x",
            "http://app.localhost:8080/",
            "fetch 127.0.0.1:8080/admin",
            "curl 0x7f.0.0.1",
        ] {
            assert_eq!(one(text).class, AddressClass::Loopback, "{text}");
        }
    }

    #[test]
    fn private_link_local_and_metadata() {
        assert_eq!(one("http://10.0.0.5/").class, AddressClass::Private);
        assert_eq!(one("http://172.16.3.4/").class, AddressClass::Private);
        assert_eq!(one("http://192.168.1.1/").class, AddressClass::Private);
        assert_eq!(one("http://100.64.0.1/").class, AddressClass::Private);
        assert_eq!(one("http://[fd12::1]/").class, AddressClass::Private);
        assert_eq!(one("http://[fe80::1]/").class, AddressClass::LinkLocal);
        assert_eq!(one("http://169.254.10.10/").class, AddressClass::LinkLocal);
        assert_eq!(
            one("http://169.254.169.254/latest/meta-data/").class,
            AddressClass::Metadata
        );
        assert_eq!(
            one("http://[::ffff:169.254.169.254]/").class,
            AddressClass::Metadata
        );
        assert_eq!(one("http://2852039166/").class, AddressClass::Metadata);
        assert_eq!(
            one("http://metadata.google.internal/computeMetadata/v1/").class,
            AddressClass::Metadata
        );
        assert_eq!(one("http://[fd00:ec2::254]/").class, AddressClass::Metadata);
        assert_eq!(one("http://0.0.0.0:8000/").class, AddressClass::Unroutable);
        assert_eq!(one("http://8.8.8.8/").class, AddressClass::Public);
    }

    #[test]
    fn hosts_are_normalised_as_a_browser_would() {
        assert_eq!(
            one("see HTTPS://API.Example.COM./v1").host,
            "api.example.com"
        );
        assert_eq!(one("https://bücher.example/").host, "xn--bcher-kva.example");
        assert_eq!(one("https://example.com\\@evil.com/").host, "example.com");
        assert_eq!(
            one("api.internal.example.com/v1/x").host,
            "api.internal.example.com"
        );
    }

    #[test]
    fn bad_schemes_and_user_info_are_problems() {
        assert_eq!(
            one("ftp://example.com/x").problem,
            Some(UrlProblem::Scheme("ftp".into()))
        );
        assert_eq!(
            one("file:///etc/passwd").problem,
            Some(UrlProblem::Scheme("file".into()))
        );
        assert_eq!(
            one("gopher://127.0.0.1:6379/_x").problem,
            Some(UrlProblem::Scheme("gopher".into()))
        );
        let d = one("https://user:pw@example.com/");
        assert_eq!(d.problem, Some(UrlProblem::UserInfo));
        assert_eq!(d.host, "example.com");
        assert_eq!(
            one("https://good.example.com@evil.example.net/").host,
            "evil.example.net"
        );
    }

    #[test]
    fn ordinary_text_has_no_destinations() {
        for text in [
            "version 1.2.3",
            "see notes.txt and main.rs",
            "a.b",
            "3.14",
            "hello world",
            "e.g. this",
        ] {
            assert!(
                destinations(text).is_empty(),
                "{text:?} -> {:?}",
                destinations(text)
            );
        }
    }
}

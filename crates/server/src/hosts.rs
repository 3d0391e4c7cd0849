//! Which Host values (and so which Origins) the service answers to: the allowlist behind the
//! DNS-rebinding defence of [`crate::security`].

/// Which Host values the service answers to.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    /// The port the service is bound to.
    pub port: u16,
    /// Extra host names, lowercase, configured by the user.
    pub extra_names: Vec<String>,
}

impl HostPolicy {
    fn names(&self) -> impl Iterator<Item = &str> {
        ["localhost", "127.0.0.1", "[::1]"]
            .into_iter()
            .chain(self.extra_names.iter().map(String::as_str))
    }

    /// Whether `authority` (`host[:port]`) names this service exactly.
    pub fn allows_authority(&self, authority: &str) -> bool {
        let authority = authority.to_ascii_lowercase();
        let (host, port) = match authority.rsplit_once(':') {
            // `[::1]` alone contains colons but ends with `]`.
            Some((h, p)) if !p.ends_with(']') => (h, p.parse::<u16>().ok()),
            _ => (authority.as_str(), Some(80)),
        };
        port == Some(self.port) && self.names().any(|n| n == host)
    }

    /// The origins that are this service's own.
    pub fn allows_origin(&self, origin: &str) -> bool {
        origin
            .strip_prefix("http://")
            .is_some_and(|authority| self.allows_authority(authority))
    }
}

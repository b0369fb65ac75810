//! Which store a `[store] url` names, and the URL as it may be shown (password redacted).

/// The kinds of store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// The embedded redb files in the data directory (the default).
    Embedded,
    /// PostgreSQL (`postgres://` or `postgresql://`), shared by several instances.
    Postgres,
}

impl StoreKind {
    /// The kind `url` names; an error for an unknown scheme.
    pub fn of(url: &str) -> Result<Self, String> {
        let url = url.trim();
        if url.is_empty() {
            return Ok(Self::Embedded);
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres);
        }
        Err(format!(
            "store.url {:?} is neither empty (embedded) nor postgres://...",
            redacted(url)
        ))
    }
}

/// `url` with the password of its user-info part (`user:password@`) replaced by `***`, for
/// logs, errors and `Debug`.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(StoreKind::of("").unwrap(), StoreKind::Embedded);
        assert_eq!(
            StoreKind::of("postgres://ns@127.0.0.1:5432/lora").unwrap(),
            StoreKind::Postgres
        );
        assert_eq!(
            StoreKind::of("postgresql://x/y").unwrap(),
            StoreKind::Postgres
        );
        let e = StoreKind::of("mysql://u:hunter2@h/db").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redacted("postgres://ns:s3cret@db:5432/lora?sslmode=disable"),
            "postgres://ns:***@db:5432/lora?sslmode=disable"
        );
        assert_eq!(redacted("postgres://ns@db/lora"), "postgres://ns@db/lora");
        assert_eq!(redacted("postgres://db/lora"), "postgres://db/lora");
        assert_eq!(redacted("postgres://a:b@c"), "postgres://a:***@c");
    }
}

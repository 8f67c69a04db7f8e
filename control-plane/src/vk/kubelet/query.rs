//! Query strings as the kubelet reads them: repeated keys (`command=a&command=b`)
//! and booleans written `1`/`true`.

/// A parsed query string.
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parses `a=1&b=x%20y`.
    pub fn parse(query: &str) -> Self {
        Self(
            form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Whether `key` is `1` or `true`.
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("1" | "true" | "True"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_and_flags() {
        let q = Query::parse("command=sh&command=-c&command=echo%20hi&stdin=1&tty=true&stdout=0");
        assert_eq!(q.all("command"), ["sh", "-c", "echo hi"]);
        assert!(q.flag("stdin") && q.flag("tty") && !q.flag("stdout") && !q.flag("stderr"));
    }
}

//! The live status page at `GET /`: one self-contained HTML file (its CSS, its script,
//! its charts drawn as SVG by that script; nothing fetched from elsewhere, so it works on
//! an air-gapped node) embedded in the binary. It refreshes itself from
//! `/api/v1/services` and `/api/v1/vrrp`, and shows a section for each key of those
//! answers it does not know, so that what the snapshot gains shows without a new page.

/// The page, with `{{TOKEN}}` where the API token goes.
const PAGE: &str = include_str!("status_page.html");

/// The page's `Content-Security-Policy`: its own inline style and script, requests to the
/// API it came from, nothing else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     script-src 'unsafe-inline'; connect-src 'self'; img-src data:";

/// The page for a client that showed `token` (the daemon's, when it has one): the script
/// sends it back on its API requests, since a browser does not repeat a bearer token by
/// itself. Served only to a request that carried that token.
pub fn render(token: Option<&str>) -> String {
    PAGE.replace("{{TOKEN}}", &escape_attribute(token.unwrap_or("")))
}

fn escape_attribute(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_carries_the_token_escaped_and_loads_nothing_from_elsewhere() {
        let page = render(Some("a\"b<c>&'"));
        assert!(
            page.contains(r#"<meta name="bascule-token" content="a&quot;b&lt;c&gt;&amp;&#39;">"#)
        );
        assert!(render(None).contains(r#"<meta name="bascule-token" content="">"#));
        // SVG's namespace is a name, not an address the browser fetches.
        let page = page.replace("\"http://www.w3.org/2000/svg\"", "");
        for outside in ["http://", "https://", "//cdn", "src=\"", "@import", "url("] {
            assert!(!page.contains(outside), "the page refers to {outside}");
        }
        for source in ["/api/v1/services", "/api/v1/vrrp"] {
            assert!(page.contains(source));
        }
    }
}

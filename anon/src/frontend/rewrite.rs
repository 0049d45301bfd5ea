//! HTML rewriting for the front end: every link, image, script, style
//! sheet, frame and form of a page fetched through the tunnel points back at
//! the front end (`/go?url=…`), so that the browser never contacts an
//! origin itself. The parsing is lol_html's (a streaming rewriter); this
//! module only decides what each URL becomes.

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};

use lol_html::html_content::Element;
use lol_html::{HtmlRewriter, MemorySettings, Settings, element};
use url::Url;

/// The most memory the rewriter may buffer (a start tag split across
/// chunks, say): past it the page is refused, not held.
const MAX_REWRITER_MEMORY: usize = 16 << 20;

/// Why a page could not be rewritten.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    /// Reading the page or writing the result failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// lol_html gave up (its memory limit, an ambiguity it refuses).
    #[error("the page could not be rewritten: {0}")]
    Html(#[from] lol_html::errors::RewritingError),
}

/// The front end's address for an absolute http(s) URL: `/go?url=…`, the
/// fragment left outside so that in-page anchors still work.
pub fn go_link(abs: &Url) -> String {
    let mut without = abs.clone();
    let fragment = without.fragment().map(str::to_owned);
    without.set_fragment(None);
    let mut link =
        format!("/go?url={}", url::form_urlencoded::byte_serialize(without.as_str().as_bytes()).collect::<String>());
    if let Some(f) = fragment {
        link.push('#');
        link.push_str(&f);
    }
    link
}

/// The front end's address for a GET form's target: the query is the
/// browser's to fill in with the form's fields, so the target travels in
/// the path (`/form/<percent-encoded URL>`), where no field name can
/// collide with it.
pub fn form_link(abs: &Url) -> String {
    let mut target = abs.clone();
    target.set_query(None);
    target.set_fragment(None);
    let encoded = percent_encoding::utf8_percent_encode(target.as_str(), percent_encoding::NON_ALPHANUMERIC);
    format!("/form/{encoded}")
}

fn is_web(url: &Url) -> bool {
    matches!(url.scheme(), "http" | "https")
}

/// What a URL attribute's value becomes, or `None` to leave it alone:
/// fragments, `javascript:`, `data:`, `mailto:` and anything else that is
/// not http(s), and values that do not parse.
pub fn rewrite_url(raw: &str, base: &Url) -> Option<String> {
    let value = raw.trim_matches(|c: char| c.is_ascii_whitespace());
    if value.is_empty() || value.starts_with('#') {
        return None;
    }
    let abs = base.join(value).ok()?;
    is_web(&abs).then(|| go_link(&abs))
}

/// A `srcset` with each candidate's URL rewritten and its descriptors
/// (`2x`, `480w`) kept (the candidate syntax of the HTML standard, §4.8.4.3.10).
pub fn rewrite_srcset(value: &str, base: &Url) -> String {
    let mut candidates = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == ',');
        if rest.is_empty() {
            break;
        }
        let end = rest.find(|c: char| c.is_ascii_whitespace()).unwrap_or(rest.len());
        let (url, after) = rest.split_at(end);
        let (url, descriptors, tail) = if url.ends_with(',') {
            // "a.png,b.png 2x": the comma ends a candidate without descriptors.
            (url.trim_end_matches(','), "", after)
        } else {
            let end = after.find(',').unwrap_or(after.len());
            let (descriptors, tail) = after.split_at(end);
            (url, descriptors.trim(), tail)
        };
        let url = rewrite_url(url, base).unwrap_or_else(|| url.to_owned());
        candidates.push(if descriptors.is_empty() { url } else { format!("{url} {descriptors}") });
        rest = tail;
    }
    candidates.join(", ")
}

/// Decodes the character references of an attribute's raw value (lol_html
/// hands them over undecoded): numeric ones, and the named ones that occur
/// in URLs. Others stay as written.
pub fn decode_entities(raw: &str) -> String {
    const NAMED: [(&str, char); 6] =
        [("amp;", '&'), ("lt;", '<'), ("gt;", '>'), ("quot;", '"'), ("apos;", '\''), ("nbsp;", '\u{a0}')];
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find('&') {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let after = from.get(1..).unwrap_or_default();
        if let Some(num) = after.strip_prefix('#') {
            let (hex, digits) = match num.strip_prefix(['x', 'X']) {
                Some(h) => (true, h),
                None => (false, num),
            };
            let len = digits
                .find(|c: char| !(if hex { c.is_ascii_hexdigit() } else { c.is_ascii_digit() }))
                .unwrap_or(digits.len());
            let (number, tail) = digits.split_at(len);
            if !number.is_empty() {
                let code = u32::from_str_radix(number.get(..8).unwrap_or(number), if hex { 16 } else { 10 }).ok();
                out.push(code.filter(|&c| c != 0).and_then(char::from_u32).unwrap_or('\u{fffd}'));
                rest = tail.strip_prefix(';').unwrap_or(tail);
                continue;
            }
        } else if let Some((name, c)) = NAMED.iter().find(|(name, _)| after.starts_with(name)) {
            out.push(*c);
            rest = after.get(name.len()..).unwrap_or_default();
            continue;
        }
        out.push('&');
        rest = after;
    }
    out.push_str(rest);
    out
}

/// A value to hand to lol_html's `set_attribute`, which escapes `"` but
/// takes `&` as the start of a reference.
fn attribute_value(s: &str) -> String {
    s.replace('&', "&amp;")
}

/// Rewrites `name`'s URL, if it is one to rewrite.
fn rewrite_attr(el: &mut Element, name: &str, base: &Url) {
    if let Some(raw) = el.get_attribute(name) {
        if let Some(new) = rewrite_url(&decode_entities(&raw), base) {
            // The name is one of ours and valid: this cannot fail.
            let _ = el.set_attribute(name, &attribute_value(&new));
        }
    }
}

/// Rewrites the page read from `input` into `out`. `page` is where it came
/// from (after redirects): URLs resolve against it, or against the page's
/// first `<base href>`, which is then removed (the browser would resolve
/// against the front end otherwise). A base that comes after URLs that
/// needed it is taken into account only from there on (a streaming rewriter
/// cannot look ahead).
pub fn rewrite_html(input: &mut dyn Read, out: &mut dyn Write, page: &Url) -> Result<(), RewriteError> {
    let base = RefCell::new(page.clone());
    let base_seen = Cell::new(false);
    let current = || base.borrow().clone();
    let mut failed: Option<io::Error> = None;
    {
        let settings = Settings {
            element_content_handlers: vec![
                element!("base", |el| {
                    if !base_seen.get() {
                        if let Some(href) = el.get_attribute("href") {
                            // The base itself resolves against the page.
                            if let Ok(url) = page.join(decode_entities(&href).trim()) {
                                base_seen.set(true);
                                *base.borrow_mut() = url;
                            }
                        }
                    }
                    el.remove();
                    Ok(())
                }),
                element!("a[href], area[href], link[href]", |el| {
                    rewrite_attr(el, "href", &current());
                    Ok(())
                }),
                element!(
                    "img[src], source[src], script[src], iframe[src], frame[src], video[src], audio[src], \
                     track[src], embed[src], input[src]",
                    |el| {
                        rewrite_attr(el, "src", &current());
                        Ok(())
                    }
                ),
                element!("video[poster]", |el| {
                    rewrite_attr(el, "poster", &current());
                    Ok(())
                }),
                element!("img[srcset], source[srcset]", |el| {
                    if let Some(raw) = el.get_attribute("srcset") {
                        let new = rewrite_srcset(&decode_entities(&raw), &current());
                        let _ = el.set_attribute("srcset", &attribute_value(&new));
                    }
                    Ok(())
                }),
                element!("form", |el| {
                    let base = current();
                    // No action, or an empty one, is the page itself.
                    let action =
                        el.get_attribute("action").map(|a| decode_entities(&a)).filter(|a| !a.trim().is_empty());
                    let target = match action {
                        Some(a) => base.join(a.trim()).ok(),
                        None => Some(page.clone()),
                    };
                    let method = el.get_attribute("method").unwrap_or_default().trim().to_ascii_lowercase();
                    if let Some(target) = target.filter(is_web) {
                        let new =
                            if method.is_empty() || method == "get" { form_link(&target) } else { go_link(&target) };
                        let _ = el.set_attribute("action", &attribute_value(&new));
                    }
                    Ok(())
                }),
                element!("[ping]", |el| {
                    // Pings would go to the origin directly, past the tunnel.
                    el.remove_attribute("ping");
                    Ok(())
                }),
            ],
            memory_settings: MemorySettings { max_allowed_memory_usage: MAX_REWRITER_MEMORY, ..MemorySettings::new() },
            ..Settings::new()
        };
        let mut rewriter = HtmlRewriter::new(settings, |chunk: &[u8]| {
            if failed.is_none() {
                if let Err(e) = out.write_all(chunk) {
                    failed = Some(e);
                }
            }
        });
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            rewriter.write(buf.get(..n).unwrap_or_default())?;
        }
        rewriter.end()?;
    }
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(html: &str, page: &str) -> String {
        let mut out = Vec::new();
        rewrite_html(&mut html.as_bytes(), &mut out, &Url::parse(page).unwrap()).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn go(url: &str) -> String {
        go_link(&Url::parse(url).unwrap())
    }

    #[test]
    fn links_resolve_against_the_page_and_point_at_the_front_end() {
        let out = rewrite(
            r#"<a href="two.html?a=1&amp;b=2">x</a><a href="/abs#top">y</a><a href="https://other.example/">z</a>"#,
            "http://example.org/dir/one.html",
        );
        assert!(out.contains(r#"href="/go?url=http%3A%2F%2Fexample.org%2Fdir%2Ftwo.html%3Fa%3D1%26b%3D2""#), "{out}");
        assert!(out.contains(r#"href="/go?url=http%3A%2F%2Fexample.org%2Fabs#top""#), "{out}");
        assert!(out.contains(&format!(r#"href="{}""#, go("https://other.example/"))), "{out}");
    }

    #[test]
    fn other_schemes_and_fragments_are_left_alone() {
        let html = r##"<a href="javascript:alert(1)">j</a><a href="  JavaScript:void(0)">J</a><a href="#sec">f</a><a href="mailto:a@b.c">m</a><img src="data:image/png;base64,AAAA">"##;
        assert_eq!(rewrite(html, "https://example.org/"), html);
    }

    #[test]
    fn every_kind_of_subresource_is_rewritten() {
        let out = rewrite(
            r#"<img src="i.png"><script src="s.js"></script><link rel=stylesheet href=c.css><iframe src="f.html"></iframe><video src="v.mp4" poster="p.jpg"></video><audio src="a.ogg"></audio><area href="m.html">"#,
            "https://example.org/",
        );
        for name in ["i.png", "s.js", "c.css", "f.html", "v.mp4", "p.jpg", "a.ogg", "m.html"] {
            assert!(out.contains(&go(&format!("https://example.org/{name}"))), "{name}: {out}");
        }
        assert!(!out.contains("\"i.png\"") && !out.contains("=c.css"), "{out}");
    }

    #[test]
    fn srcset_candidates_each_rewritten_with_their_descriptors() {
        let base = Url::parse("https://example.org/a/").unwrap();
        assert_eq!(
            rewrite_srcset(" small.png 1x,\n big.png  2x , data:image/png;base64,AA 3x", &base),
            format!(
                "{} 1x, {} 2x, data:image/png;base64,AA 3x",
                go("https://example.org/a/small.png"),
                go("https://example.org/a/big.png")
            )
        );
        assert_eq!(
            rewrite_srcset("a.png, b.png 480w,c.png 1x", &base),
            format!(
                "{}, {} 480w, {} 1x",
                go("https://example.org/a/a.png"),
                go("https://example.org/a/b.png"),
                go("https://example.org/a/c.png")
            )
        );
        let out = rewrite(
            r#"<picture><source srcset="x.webp 2x"><img srcset="y.png 2x" src="y.png"></picture>"#,
            "https://example.org/",
        );
        assert!(out.contains(&format!(r#"srcset="{} 2x""#, go("https://example.org/x.webp"))), "{out}");
        assert!(out.contains(&format!(r#"srcset="{} 2x""#, go("https://example.org/y.png"))), "{out}");
    }

    #[test]
    fn base_href_is_used_then_removed() {
        let out = rewrite(
            r#"<head><base href="/other/"><base href="https://ignored.example/"></head><a href="page.html">p</a>"#,
            "https://example.org/dir/index.html",
        );
        assert!(!out.contains("<base"), "{out}");
        assert!(out.contains(&go("https://example.org/other/page.html")), "{out}");
    }

    #[test]
    fn forms_keep_their_method_and_get_targets_travel_in_the_path() {
        let out = rewrite(
            r#"<form action="/search?old=1" method="get"><input name="q"></form><form method=POST action="post.cgi"></form><form></form><form action="javascript:void(0)"></form>"#,
            "https://example.org/dir/page.html?x=1",
        );
        assert!(out.contains(r#"action="/form/https%3A%2F%2Fexample%2Eorg%2Fsearch""#), "{out}");
        assert!(out.contains(&format!(r#"method=POST action="{}""#, go("https://example.org/dir/post.cgi"))), "{out}");
        assert!(out.contains(r#"<form action="/form/https%3A%2F%2Fexample%2Eorg%2Fdir%2Fpage%2Ehtml">"#), "{out}");
        assert!(out.contains(r#"action="javascript:void(0)""#), "{out}");
    }

    #[test]
    fn attribute_values_stay_escaped() {
        // A quote or an ampersand in a fragment cannot end the attribute or
        // start a reference.
        let out =
            rewrite(r#"<a href="/p#a&quot;b&amp;c" ping="https://tracker.example/">x</a>"#, "https://example.org/");
        assert!(out.contains(r#"href="/go?url=https%3A%2F%2Fexample.org%2Fp#a%22b&amp;c""#), "{out}");
        assert!(!out.contains("ping"), "{out}");
    }

    #[test]
    fn references_decode() {
        assert_eq!(decode_entities("a&amp;b&#38;c&#x26;d&unknown;e&"), "a&b&c&d&unknown;e&");
        assert_eq!(decode_entities("&#0;&#99999999999;"), "\u{fffd}\u{fffd}");
    }
}

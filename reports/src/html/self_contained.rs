//! The check that a page stands alone, shared by the unit tests (`html::tests`) and the
//! integration tests (`tests/common`, which include this file by path): written once, so
//! that both test what "self-contained" means in the same words.

/// Nothing that loads from elsewhere, no script, and no coordinate that is not a number.
pub fn assert_self_contained(what: &str, html: &str) {
    for bad in [
        "http://",
        "https://",
        "src=\"//",
        "href=\"//",
        "<script",
        "@import",
        "url(",
    ] {
        assert!(!html.contains(bad), "{what}: the report contains {bad:?}");
    }
    assert!(
        !html.contains("NaN") && !html.contains("inf\""),
        "{what}: a coordinate is not a number"
    );
}

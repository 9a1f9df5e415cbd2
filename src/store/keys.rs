//! The one place counter keys are built.
//!
//! Layout: `<prefix>{<domain>_<k0>_<v0>}_<k1>_<v1>...[_<tag>][_<window start>]`. The tag
//! tells apart the limits of one node (empty for a plain reference limit); a token
//! bucket has no window start. The braces are a
//! Redis Cluster hash tag over the domain and the first entry: descriptors of one request
//! usually share their first entry (the tenant, the remote address), so their counters
//! land in one slot and one script call serves them all. The Redis store groups any that
//! do not by tag. A prefix lets several deployments share one Redis; a prefix containing
//! braces would take over the hash tag, so the settings reject it.

/// The key of one counter: the descriptor's entries, the limit's tag, and the window
/// starting at `window_start` (if the counter is per window).
pub fn counter_key<'a>(
    prefix: &str,
    domain: &str,
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    tag: &str,
    window_start: Option<u64>,
) -> String {
    let mut key = String::with_capacity(prefix.len() + domain.len() + 64);
    key.push_str(prefix);
    key.push('{');
    key.push_str(domain);
    let mut first = true;
    for (k, v) in entries {
        key.push('_');
        key.push_str(k);
        key.push('_');
        key.push_str(v);
        if first {
            key.push('}');
            first = false;
        }
    }
    if first {
        key.push('}');
    }
    if !tag.is_empty() {
        key.push('_');
        key.push_str(tag);
    }
    if let Some(start) = window_start {
        key.push('_');
        // itoa: `write!`'s formatting machinery cost as much as the rest of the key.
        key.push_str(itoa::Buffer::new().format(start));
    }
    key
}

/// The hash tag of a key built by [`counter_key`]: counters with equal tags share a slot.
pub fn hash_tag(key: &str) -> &str {
    match (key.find('{'), key.find('}')) {
        (Some(open), Some(close)) if close > open + 1 => &key[open + 1..close],
        _ => key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_holds_prefix_domain_entries_and_window() {
        let key = counter_key("p:", "dom", [("k1", "v1"), ("k2", "v2")], "", Some(60));
        assert_eq!(key, "p:{dom_k1_v1}_k2_v2_60");
        let key = counter_key("", "dom", [("k1", "v1")], "burst~tb1", None);
        assert_eq!(key, "{dom_k1_v1}_burst~tb1");
    }

    #[test]
    fn keys_sharing_domain_and_first_entry_share_a_tag() {
        let a = counter_key(
            "",
            "dom",
            [("tenant", "acme"), ("model", "m1")],
            "",
            Some(0),
        );
        let b = counter_key(
            "",
            "dom",
            [("tenant", "acme"), ("session", "s")],
            "x",
            Some(0),
        );
        let c = counter_key("", "dom", [("tenant", "other")], "", Some(0));
        assert_eq!(hash_tag(&a), hash_tag(&b));
        assert_ne!(hash_tag(&a), hash_tag(&c));
    }

    #[test]
    fn window_starts_are_written_in_decimal() {
        for start in [0, 7, 10, 1_800_000_000, u64::MAX] {
            let key = counter_key("", "d", [("k", "v")], "", Some(start));
            assert_eq!(key, format!("{{d_k_v}}_{start}"));
        }
    }

    #[test]
    fn different_windows_are_different_counters() {
        let a = counter_key("", "d", [("k", "v")], "", Some(0));
        let b = counter_key("", "d", [("k", "v")], "", Some(60));
        assert_ne!(a, b);
    }
}

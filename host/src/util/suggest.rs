//! "Did you mean": the one algorithm every hint uses (config keys, flow fields, op names,
//! flow names).

/// The known word closest to `word`, if one is close enough to be a likely typo: Jaro-Winkler
/// similarity of at least 0.8, compared case-insensitively with `-` read as `_`, and also
/// against the known word without its underscores (`apikey` finds `api_key`). Ties go to the
/// word that sorts first, so the hint does not depend on the order of `known`.
pub(crate) fn closest<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lowered = word.to_ascii_lowercase().replace('-', "_");
    known
        .into_iter()
        .map(|candidate| {
            let folded = candidate.to_ascii_lowercase();
            let squashed = folded.replace('_', "");
            let score = strsim::jaro_winkler(&lowered, &folded)
                .max(strsim::jaro_winkler(&lowered, &squashed));
            (score, candidate)
        })
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::closest;

    #[test]
    fn typos_find_their_word_and_strangers_find_none() {
        let keys = ["api_key", "keepalive_secs", "host", "port"];
        assert_eq!(closest("apikey", keys), Some("api_key"));
        assert_eq!(closest("keepalive", keys), Some("keepalive_secs"));
        assert_eq!(closest("CuontOp", ["CountOp", "EchoOp"]), Some("CountOp"));
        assert_eq!(closest("EchoOpp", ["CountOp", "EchoOp"]), Some("EchoOp"));
        assert_eq!(closest("zzzzzz", keys), None);
    }

    #[test]
    fn ties_do_not_depend_on_order() {
        assert_eq!(closest("ab", ["ac", "ad"]), closest("ab", ["ad", "ac"]));
    }
}

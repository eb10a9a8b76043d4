//! "Did you mean": the one algorithm every hint uses (config keys, flow fields, op names,
//! flow names).

/// The known word closest to `word`, if one is close enough to be a likely typo. Words are
/// compared lower-cased, with `-` read as `_`. A known word qualifies when it is a few edits
/// away (Damerau-Levenshtein distance at most a third of its length, plus one: `CuontOp` →
/// `CountOp`, `EOp` → `EchoOp`) or when it reads alike (Jaro-Winkler similarity of at least
/// 0.8, also against the known word without its underscores: `keepalive` → `keepalive_secs`,
/// `apikey` → `api_key`). The fewest edits win, then the closer reading, then the word that
/// sorts first, so the hint never depends on the order of `known`.
pub(crate) fn closest<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lowered = word.to_ascii_lowercase().replace('-', "_");
    known
        .into_iter()
        .filter_map(|candidate| {
            let folded = candidate.to_ascii_lowercase();
            let edits = strsim::damerau_levenshtein(&lowered, &folded);
            let alike = strsim::jaro_winkler(&lowered, &folded)
                .max(strsim::jaro_winkler(&lowered, &folded.replace('_', "")));
            let few_edits = edits <= candidate.len().max(3) / 3 + 1;
            (few_edits || alike >= 0.8).then_some((edits, alike, candidate))
        })
        .min_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| b.1.total_cmp(&a.1))
                .then_with(|| a.2.cmp(b.2))
        })
        .map(|(_, _, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::closest;

    #[test]
    fn typos_find_their_word_and_strangers_find_none() {
        let keys = ["api_key", "keepalive_secs", "host", "port"];
        assert_eq!(closest("apikey", keys), Some("api_key"));
        assert_eq!(closest("keepalive", keys), Some("keepalive_secs"));
        assert_eq!(closest("zzzzzz", keys), None);
    }

    #[test]
    fn op_names_keep_the_hints_of_few_edits() {
        let ops = ["ChatOp", "CountOp", "EchoOp", "ReactAgentOp"];
        assert_eq!(closest("CuontOp", ops), Some("CountOp"));
        assert_eq!(closest("EchoOpp", ops), Some("EchoOp"));
        assert_eq!(closest("EOp", ops), Some("EchoOp"));
        assert_eq!(closest("ReactOp", ops), Some("ChatOp"));
        assert_eq!(closest("CountdownOp", ops), Some("CountOp"));
    }

    #[test]
    fn ties_do_not_depend_on_order() {
        assert_eq!(closest("ab", ["ac", "ad"]), closest("ab", ["ad", "ac"]));
        assert_eq!(closest("step3", ["step1", "step2"]), Some("step1"));
    }
}

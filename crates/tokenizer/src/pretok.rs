//! How a byte-level BPE vocabulary splits text into words before merging, by its
//! `tokenizer.ggml.pre` name.
//!
//! Each pre-type is a list of regexes applied one after the other: every regex splits each
//! piece left by the previous ones into its matches and the text between them (Hugging Face's
//! `Split` with `Isolated` behaviour, and llama.cpp's `unicode_regex_split`). The patterns are
//! the ones the models' own tokenizer.json files use, with the case-insensitive contraction
//! group `(?i:'s|...)` spelled out with explicit case classes as llama.cpp spells it (Unicode
//! case folding would otherwise also match `'ſ` and the Kelvin sign).

/// English contractions, case-insensitive.
const CONTRACTIONS: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";

/// GPT-2's split.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// The tail that Llama 3, Qwen2 and most later byte-level vocabularies share: punctuation runs
/// with trailing newlines, newline runs, trailing whitespace, other whitespace.
const TAIL: &str = r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A split of the vocabulary's pre-type.
pub(crate) struct PreSplit {
    /// Regexes, applied in order.
    pub regexes: Vec<String>,
    /// A word that is itself a token is not merged (Hugging Face's `ignore_merges`).
    pub ignore_merges: bool,
    /// The model adds BOS unless its file says otherwise.
    pub add_bos: bool,
}

fn llama3_like(numbers: &str) -> String {
    format!(r"{CONTRACTIONS}|[^\r\n\p{{L}}\p{{N}}]?\p{{L}}+|{numbers}|{TAIL}")
}

/// GPT-4o's word pattern: an optional non-letter, upper-case then lower-case letters (marks
/// count as both), an optional contraction.
fn gpt4o_words() -> String {
    let up = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]";
    let low = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]";
    format!(
        r"[^\r\n\p{{L}}\p{{N}}]?{up}*{low}+{CONTRACTIONS}?|[^\r\n\p{{L}}\p{{N}}]?{up}+{low}*{CONTRACTIONS}?"
    )
}

/// DeepSeek LLM's letters: Latin, Greek, Cyrillic, Armenian, Georgian, Cherokee and the other
/// cased scripts, as ranges (the tokenizer lists them instead of using `\p{L}`).
const DEEPSEEK_LETTERS: &str = concat!(
    r"A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}",
    r"\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}",
    r"\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}",
);

/// CJK ideographs (and the blocks DeepSeek groups with them), Hangul.
const DEEPSEEK_CJK: &str = r"[\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+";

/// Bloom-style: anything up to whitespace or sentence punctuation.
const BLOOM: &str = r" ?[^(\s|.,!?\x{2026}\x{3002}\x{FF0C}\x{3001}\x{964}\x{6D4}\x{60C})]+";

/// The split for `pre` (None: a name this table does not know).
pub(crate) fn pre_split(pre: &str) -> Option<PreSplit> {
    let s = |v: &[&str]| v.iter().map(|r| r.to_string()).collect::<Vec<_>>();
    let (regexes, ignore_merges, add_bos) = match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => (vec![llama3_like(r"\p{N}{1,3}")], true, true),
        "dbrx" | "smaug-bpe" | "chatglm-bpe" => (vec![llama3_like(r"\p{N}{1,3}")], false, false),
        "glm4" | "glm5" => (vec![llama3_like(r"\p{N}{1,3}")], true, false),
        "jais-2" => {
            let mut ws: Vec<String> = [512, 256, 128, 64, 32, 16, 8, 4]
                .iter()
                .map(|n| format!(r"\s{{{n}}}(?!\S)"))
                .collect();
            ws.push(r"\s{1,2}(?!\S)|\s{1}".into());
            let r = format!(
                r"{CONTRACTIONS}|[^\r\n\p{{L}}\p{{N}}]?\p{{L}}+|\p{{N}}{{1,3}}| ?[^\s\p{{L}}\p{{N}}]+[\r\n]*|\s*[\r\n]+|{}",
                ws.join("|")
            );
            (vec![r], false, false)
        }
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "stablelm2" | "hunyuan"
        | "solar-open" | "megrez" | "grok-2" => (vec![llama3_like(r"\p{N}")], false, false),
        "qwen35" => (
            vec![format!(
                r"{CONTRACTIONS}|[^\r\n\p{{L}}\p{{N}}]?[\p{{L}}\p{{M}}]+|\p{{N}}| ?[^\s\p{{L}}\p{{M}}\p{{N}}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
            )],
            false,
            false,
        ),
        "minicpm5" => (
            vec![r"\p{N}{1,3}".into(), llama3_like(r"\p{N}+")],
            true,
            false,
        ),
        "ufakzeka" => (
            vec![format!(r"[^\r\n\p{{L}}\p{{N}}]?\p{{L}}+|\p{{N}}|{TAIL}")],
            false,
            false,
        ),
        "seed-coder" => (
            vec![format!(
                r"{CONTRACTIONS}|[^\r\n\p{{L}}\p{{N}}]?\p{{L}}+|\p{{N}}{{1}}| ?[^\s\p{{L}}\p{{N}}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"
            )],
            false,
            false,
        ),
        "bailingmoe" | "bailingmoe2" | "llada-moe" => (
            vec![
                r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+".into(),
            ],
            false,
            false,
        ),
        "exaone-moe" => (
            vec![format!(
                r"{CONTRACTIONS}|[^\r\n\p{{L}}\p{{N}}]?(?:\p{{L}}\p{{M}}*(?: \p{{L}}\p{{M}}*)*)+|\p{{N}}| ?[^\s\p{{L}}\p{{N}}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+"
            )],
            false,
            false,
        ),
        "laguna" => (
            vec![r"[^\n]+|[\n]+".into(), llama3_like(r"\p{N}")],
            false,
            false,
        ),
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => (
            vec![format!(
                r"{}|\p{{N}}{{1,3}}| ?[^\s\p{{L}}\p{{N}}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
                gpt4o_words()
            )],
            false,
            false,
        ),
        "tiny_aya" | "cohere2moe" => (
            vec![
                r"\d{1,3}(?=(?:\d{3})*\b)".into(),
                format!(
                    r"{}|\p{{N}}{{1,3}}| ?[^\s\p{{L}}\p{{N}}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
                    gpt4o_words()
                ),
            ],
            false,
            false,
        ),
        "tekken" => {
            let up = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]";
            let low = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]";
            (
                vec![format!(
                    r"[^\r\n\p{{L}}\p{{N}}]?{up}*{low}+|[^\r\n\p{{L}}\p{{N}}]?{up}+{low}*|\p{{N}}| ?[^\s\p{{L}}\p{{N}}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
                )],
                true,
                true,
            )
        }
        "deepseek-llm" => (
            vec![
                r"[\r\n]".into(),
                format!(r"\s?[{DEEPSEEK_LETTERS}]+"),
                r"\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+".into(),
                r"\s+$".into(),
                DEEPSEEK_CJK.into(),
                r"\p{N}+".into(),
            ],
            false,
            false,
        ),
        "deepseek-coder" => (
            s(&[
                r"[\r\n]",
                r"\s?\p{L}+",
                r"\s?\p{P}+",
                DEEPSEEK_CJK,
                r"\p{N}",
            ]),
            false,
            false,
        ),
        "deepseek-v3" | "hunyuan-dense" | "joyai-llm" | "hy_v4" => (
            s(&[
                r"\p{N}{1,3}",
                r"[\x{4E00}-\x{9FA5}\x{3040}-\x{309F}\x{30A0}-\x{30FF}]+",
                r"[!-/:-@\[-`{-~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            ]),
            false,
            false,
        ),
        "spark2_5" => (
            s(&[
                r"\p{N}{1,3}",
                r"[\x{4E00}-\x{9FA5}\x{3040}-\x{309F}\x{30A0}-\x{30FF}]+",
                r"[!-/:-@\[-`{-~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+",
                r"\p{N}",
            ]),
            false,
            false,
        ),
        "falcon" => (
            s(&[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"]),
            false,
            false,
        ),
        // Digits one by one, then GPT-2's split.
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b"
        | "mellum2" => (s(&[r"\p{N}", GPT2]), false, false),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "modern-bert" | "mpt" | "olmo" | "jais" | "trillion"
        | "granite-docling" | "exaone4" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" => {
            (s(&[GPT2]), false, false)
        }
        "poro-chat" | "bloom" | "gpt3-finnish" => (s(&[BLOOM]), false, false),
        "viking" => (s(&[BLOOM, r"\p{N}"]), false, false),
        "chameleon" => (
            s(&[
                r"<sentinel:[0-9]+>",
                r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
                r"([\t\n]|    |  )",
                r"\p{N}",
                r"[\p{P}!-/:-@\[-`{-~]",
                GPT2,
            ]),
            false,
            true,
        ),
        // A vocabulary without a pre-type (older conversions): punctuation runs, GPT-2's
        // split, digit runs, then groups of three digits.
        "default" => (
            s(&[
                r"[\p{P}\$\+<=>\^~\|]+",
                GPT2,
                r"\p{N}+",
                "[0-9][0-9][0-9]",
            ]),
            false,
            false,
        ),
        _ => return None,
    };
    Some(PreSplit {
        regexes,
        ignore_merges,
        add_bos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles() {
        let names = [
            "llama-bpe",
            "dbrx",
            "glm4",
            "jais-2",
            "qwen2",
            "qwen35",
            "minicpm5",
            "ufakzeka",
            "seed-coder",
            "bailingmoe",
            "exaone-moe",
            "laguna",
            "gpt-4o",
            "tiny_aya",
            "tekken",
            "deepseek-llm",
            "deepseek-coder",
            "deepseek-v3",
            "spark2_5",
            "falcon",
            "starcoder",
            "gpt-2",
            "bloom",
            "viking",
            "chameleon",
            "default",
        ];
        for n in names {
            for r in pre_split(n).unwrap().regexes {
                fancy_regex::Regex::new(&r).unwrap_or_else(|e| panic!("{n}: {r}: {e}"));
            }
        }
        assert!(pre_split("no-such-pre").is_none());
    }
}

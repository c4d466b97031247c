//! The tweet contract: parsing, validation and normalisation of `POST /input` bodies (and of
//! tweet data that reaches the sinks), plus the keyword classifier that fills in `clima`.
//!
//! Decisions, also listed in the README:
//! - unknown fields are ignored (clients may add metadata), but `pais` and `país` together are
//!   an error because we could not tell which one is meant;
//! - `texto` is 1..=280 characters and `pais` 1..=56 characters, counted after trimming and
//!   Unicode NFC; `pais` may hold no control, zero-width or text-direction character, `texto`
//!   no control character but tab and newline;
//! - `pais` is put in one canonical case (each word capitalised, Spanish particles such as `de`
//!   and `y` in lower case), so `guatemala`, `GUATEMALA` and ` Guatemala ` count once.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use unicode_normalization::UnicodeNormalization;

/// Longest `texto`, in characters.
pub const MAX_TEXTO_CHARS: usize = 280;
/// Longest `pais`, in characters (the longest country name in Spanish fits).
pub const MAX_PAIS_CHARS: usize = 56;

/// A valid, normalised tweet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tweet {
    pub texto: String,
    pub pais: String,
    pub clima: Clima,
}

/// The closed set of weather conditions; `Desconocido` only comes from the classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Clima {
    Soleado,
    Nublado,
    Lluvioso,
    Tormenta,
    Nevado,
    Niebla,
    Ventoso,
    Desconocido,
}

impl Clima {
    /// Every condition, in the classifier's order of precedence (most severe first).
    pub const ALL: [Clima; 8] = [
        Clima::Tormenta,
        Clima::Nevado,
        Clima::Lluvioso,
        Clima::Niebla,
        Clima::Ventoso,
        Clima::Nublado,
        Clima::Soleado,
        Clima::Desconocido,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Clima::Soleado => "soleado",
            Clima::Nublado => "nublado",
            Clima::Lluvioso => "lluvioso",
            Clima::Tormenta => "tormenta",
            Clima::Nevado => "nevado",
            Clima::Niebla => "niebla",
            Clima::Ventoso => "ventoso",
            Clima::Desconocido => "desconocido",
        }
    }

    /// Accepts a condition given by a client, in any case; `desconocido` is accepted too.
    pub fn parse(s: &str) -> Option<Clima> {
        let s = s.trim().to_lowercase();
        Clima::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The documented keyword classifier: the first condition (in [`Clima::ALL`] order) one of
    /// whose words appears as a whole word of `texto` (case-insensitive), else `Desconocido`.
    pub fn classify(texto: &str) -> Clima {
        let text = texto.to_lowercase();
        let words: Vec<&str> = text.split(|c: char| !c.is_alphanumeric()).collect();
        Clima::ALL
            .into_iter()
            .find(|c| c.keywords().iter().any(|k| words.contains(k)))
            .unwrap_or(Clima::Desconocido)
    }

    fn keywords(self) -> &'static [&'static str] {
        match self {
            Clima::Tormenta => &[
                "tormenta",
                "tormentas",
                "tormentoso",
                "trueno",
                "truenos",
                "rayo",
                "rayos",
                "relámpago",
                "relámpagos",
                "huracán",
                "granizo",
                "tempestad",
            ],
            Clima::Nevado => &["nieve", "nieva", "nevado", "nevada", "nevando", "helada", "nevadas"],
            Clima::Lluvioso => &[
                "lluvia",
                "lluvias",
                "llueve",
                "lloviendo",
                "lluvioso",
                "llovizna",
                "aguacero",
                "chubasco",
                "chubascos",
            ],
            Clima::Niebla => &["niebla", "neblina", "bruma", "brumoso"],
            Clima::Ventoso => &["viento", "vientos", "ventoso", "ráfaga", "ráfagas", "vendaval"],
            Clima::Nublado => &["nublado", "nubes", "nube", "nubosidad", "encapotado", "gris"],
            Clima::Soleado => {
                &["sol", "soleado", "soleada", "despejado", "despejada", "calor", "caluroso", "calurosa"]
            }
            Clima::Desconocido => &[],
        }
    }
}

impl fmt::Display for Clima {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a body is not a valid tweet; `field` names the offending field when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{}", match field { Some(f) => format!("{f}: {message}"), None => message.clone() })]
pub struct TweetError {
    pub field: Option<&'static str>,
    pub message: String,
}

impl TweetError {
    fn field(field: &'static str, message: impl Into<String>) -> Self {
        Self { field: Some(field), message: message.into() }
    }
}

impl Tweet {
    /// Parses a JSON body (bytes, so invalid UTF-8 is reported rather than panicking).
    pub fn from_json(body: &[u8]) -> Result<Tweet, TweetError> {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Tweet::from_map(&map),
            Ok(other) => Err(TweetError {
                field: None,
                message: format!("expected a JSON object, got {}", kind(&other)),
            }),
            Err(e) => Err(TweetError { field: None, message: format!("malformed JSON: {e}") }),
        }
    }

    /// Validates and normalises the fields of a JSON object.
    pub fn from_map(map: &Map<String, Value>) -> Result<Tweet, TweetError> {
        let texto = match map.get("texto") {
            None | Some(Value::Null) => return Err(TweetError::field("texto", "is required")),
            Some(v) => string(v, "texto")?,
        };
        let texto = normalise(texto);
        check_chars("texto", &texto, MAX_TEXTO_CHARS, |c| c == '\n' || c == '\t')?;

        let pais = match (map.get("pais"), map.get("país")) {
            (Some(_), Some(_)) => {
                return Err(TweetError::field("pais", "give either `pais` or `país`, not both"));
            }
            (Some(v), None) | (None, Some(v)) if !v.is_null() => string(v, "pais")?,
            _ => return Err(TweetError::field("pais", "is required")),
        };
        let pais = canonical_case(&normalise(pais));
        check_chars("pais", &pais, MAX_PAIS_CHARS, |_| false)?;
        if let Some(c) = pais.chars().find(|c| INVISIBLE.contains(c)) {
            return Err(TweetError::field("pais", format!("contains the invisible character {c:?}")));
        }

        let clima = match map.get("clima") {
            None | Some(Value::Null) => Clima::classify(&texto),
            Some(v) => {
                let s = string(v, "clima")?;
                Clima::parse(s).ok_or_else(|| {
                    let known: Vec<_> = Clima::ALL.iter().map(|c| c.as_str()).collect();
                    TweetError::field(
                        "clima",
                        format!(
                            "unknown weather condition {:?}; expected one of {}",
                            truncate(s),
                            known.join(", ")
                        ),
                    )
                })?
            }
        };
        Ok(Tweet { texto, pais, clima })
    }
}

/// Zero-width and text-direction characters: a country name never needs them, and they would make
/// two names look alike on a dashboard.
const INVISIBLE: [char; 20] = [
    '\u{200B}', '\u{200C}', '\u{200D}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}',
    '\u{202D}', '\u{202E}', '\u{2060}', '\u{2061}', '\u{2062}', '\u{2063}', '\u{2064}', '\u{2066}',
    '\u{2067}', '\u{2068}', '\u{2069}', '\u{FEFF}',
];

fn string<'a>(v: &'a Value, field: &'static str) -> Result<&'a str, TweetError> {
    v.as_str().ok_or_else(|| TweetError::field(field, format!("expected a string, got {}", kind(v))))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn normalise(s: &str) -> String {
    s.trim().nfc().collect()
}

/// Rejects empty and too long values and control characters (other than those `allowed`).
fn check_chars(
    field: &'static str,
    value: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
) -> Result<(), TweetError> {
    let count = value.chars().count();
    if count == 0 {
        return Err(TweetError::field(field, "must not be empty"));
    }
    if count > max {
        return Err(TweetError::field(field, format!("is {count} characters long; the limit is {max}")));
    }
    if let Some(c) = value.chars().find(|&c| c.is_control() && !allowed(c)) {
        return Err(TweetError::field(field, format!("contains the control character {c:?}")));
    }
    Ok(())
}

/// Each word capitalised, the rest lower case; Spanish particles stay lower case unless first.
/// Runs of whitespace become one space.
fn canonical_case(s: &str) -> String {
    const PARTICLES: [&str; 8] = ["de", "del", "la", "las", "los", "y", "e", "el"];
    s.split_whitespace()
        .enumerate()
        .map(|(i, word)| {
            let lower = word.to_lowercase();
            if i > 0 && PARTICLES.contains(&lower.as_str()) {
                return lower;
            }
            let mut chars = lower.chars();
            chars.next().map_or_else(String::new, |first| first.to_uppercase().chain(chars).collect())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Client values echoed in errors are cut short so an error body stays small.
fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Tweet, TweetError> {
        Tweet::from_json(json.as_bytes())
    }

    #[test]
    fn accepts_both_spellings_and_normalises_the_country() {
        let a = parse(r#"{"texto":"Hoy llueve","pais":"  guatemala "}"#).unwrap();
        let b = parse(r#"{"texto":"Hoy llueve","país":"GUATEMALA"}"#).unwrap();
        assert_eq!(a.pais, "Guatemala");
        assert_eq!(a, b);
        assert_eq!(a.clima, Clima::Lluvioso);
        assert_eq!(parse(r#"{"texto":"x","pais":"el  SALVADOR"}"#).unwrap().pais, "El Salvador");
        assert_eq!(parse(r#"{"texto":"x","pais":"trinidad Y tobago"}"#).unwrap().pais, "Trinidad y Tobago");
    }

    #[test]
    fn nfc_makes_composed_and_decomposed_accents_equal() {
        let composed = parse("{\"texto\":\"x\",\"pais\":\"Per\u{00fa}\"}").unwrap();
        let decomposed = parse("{\"texto\":\"x\",\"pais\":\"peru\u{0301}\"}").unwrap();
        assert_eq!(composed.pais, decomposed.pais);
    }

    #[test]
    fn explicit_clima_wins_and_is_case_insensitive() {
        let t = parse(r#"{"texto":"Hoy llueve","pais":"Chile","clima":" SOLEADO "}"#).unwrap();
        assert_eq!(t.clima, Clima::Soleado);
    }

    #[test]
    fn classifier_uses_whole_words_and_precedence() {
        assert_eq!(Clima::classify("Tormenta con lluvia"), Clima::Tormenta);
        assert_eq!(Clima::classify("Mucho sol hoy"), Clima::Soleado);
        assert_eq!(Clima::classify("El soldado camina solo"), Clima::Desconocido);
        assert_eq!(Clima::classify("NIEBLA densa"), Clima::Niebla);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"pais":"Chile"}"#, Some("texto")),
            (r#"{"texto":"  ","pais":"Chile"}"#, Some("texto")),
            (r#"{"texto":7,"pais":"Chile"}"#, Some("texto")),
            (r#"{"texto":"x"}"#, Some("pais")),
            (r#"{"texto":"x","pais":["Chile"]}"#, Some("pais")),
            (r#"{"texto":"x","pais":"Chile","país":"Perú"}"#, Some("pais")),
            (r#"{"texto":"x","pais":"Chile","clima":"caluroso"}"#, Some("clima")),
            (r#"{"texto":"x","pais":"Chile","clima":1}"#, Some("clima")),
            (r#"{"texto":"x","pais":"Ch\u0007ile"}"#, Some("pais")),
            (r#"{"texto":"a\u0000b","pais":"Chile"}"#, Some("texto")),
            (r#"{"texto":"x","pais":"Chi\u202Ele"}"#, Some("pais")),
            (r#"{"texto":"x","pais":"Chi\u200Ble"}"#, Some("pais")),
            (r#"[1,2]"#, None),
            (r#"{"texto":"x","#, None),
        ];
        for (json, field) in cases {
            let err = parse(json).unwrap_err();
            assert_eq!(err.field, field, "{json}: {err}");
        }
    }

    #[test]
    fn limits_count_characters_not_bytes() {
        let ok = format!(r#"{{"texto":"{}","pais":"Chile"}}"#, "ñ".repeat(MAX_TEXTO_CHARS));
        assert!(parse(&ok).is_ok());
        let long = format!(r#"{{"texto":"{}","pais":"Chile"}}"#, "ñ".repeat(MAX_TEXTO_CHARS + 1));
        assert_eq!(parse(&long).unwrap_err().field, Some("texto"));
        let pais = format!(r#"{{"texto":"x","pais":"{}"}}"#, "a".repeat(MAX_PAIS_CHARS + 1));
        assert_eq!(parse(&pais).unwrap_err().field, Some("pais"));
    }

    #[test]
    fn hostile_json_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse(&deep).unwrap_err().message.starts_with("malformed JSON"));
        assert!(Tweet::from_json(b"{\"texto\":\"\xff\xfe\",\"pais\":\"Chile\"}").is_err());
    }

    #[test]
    fn a_normalised_tweet_parses_to_itself() {
        let t = parse(r#"{"texto":"Viento fuerte","pais":"costa rica"}"#).unwrap();
        let again = Tweet::from_json(&serde_json::to_vec(&t).unwrap()).unwrap();
        assert_eq!(t, again);
    }
}

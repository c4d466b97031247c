//! The tweet contract: parsing, validation and normalisation of `POST /input` bodies (and of
//! tweet data that reaches the sinks), plus the keyword classifier that fills in `clima`.
//!
//! Decisions (docs/contract.md links here rather than repeating them):
//! - unknown fields are ignored (clients may add metadata), but `pais` and `país` together are
//!   an error because we could not tell which one is meant;
//! - a key that appears twice in the tweet object is an error (serde_json's `Map` keeps the last
//!   one silently, so the object is read by our own visitor, [`FieldsVisitor`]); keys are
//!   compared after JSON unescaping, so `"pais"` and `"pa\u0069s"` are the same key. Objects
//!   nested in ignored fields are skipped, not checked;
//! - `texto` is 1..=280 characters, counted after trimming and Unicode NFC, no control character
//!   but tab and newline;
//! - `pais` is resolved against ISO 3166-1 ([`crate::country`]) and stored as the Spanish short
//!   name in `pais` plus the alpha-2 code in `pais_codigo`; `pais_codigo` is always derived from
//!   `pais`, never read from a client or an event. The raw value may be at most
//!   [`MAX_PAIS_CHARS`] characters (after trimming) and hold no control character other than
//!   whitespace.

use crate::country::{self, Country};
use serde::{
    Deserialize, Deserializer, Serialize,
    de::{self, IgnoredAny, MapAccess, Visitor},
};
use serde_json::{Map, Value};
use std::{borrow::Cow, collections::HashSet, fmt};
use unicode_normalization::UnicodeNormalization;

/// Longest `texto`, in characters.
pub const MAX_TEXTO_CHARS: usize = 280;
/// Longest raw `pais`, in characters after trimming: about three times the longest spelling in
/// the table (40), leaving room for format characters and spacing, which do not count for the
/// match; anything longer is refused before any work on it.
pub const MAX_PAIS_CHARS: usize = 128;

/// A valid, normalised tweet. Built only by [`Tweet::new`], [`Tweet::from_json`],
/// [`Tweet::from_map`] or its `Deserialize` (all of which validate); serialised as
/// `{"texto", "pais", "pais_codigo", "clima"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tweet {
    pub texto: String,
    /// The country's Spanish short name (CLDR `es`), e.g. `Perú`: one of a closed list of 249.
    pub pais: &'static str,
    /// The country's ISO 3166-1 alpha-2 code, e.g. `PE`.
    pub pais_codigo: &'static str,
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
    /// Validates and normalises a tweet given field by field; `clima: None` means "classify".
    pub fn new(texto: &str, pais: &str, clima: Option<&str>) -> Result<Tweet, TweetError> {
        Fields {
            texto: Some(Value::from(texto)),
            pais: Some(Value::from(pais)),
            clima: clima.map(Value::from),
            ..Fields::default()
        }
        .validate()
    }

    /// Parses a JSON body (bytes, so invalid UTF-8 is reported rather than panicking).
    pub fn from_json(body: &[u8]) -> Result<Tweet, TweetError> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let fields = de.deserialize_map(FieldsVisitor).and_then(|fields| de.end().map(|()| fields));
        fields.map_err(json_error)?.validate()
    }

    /// Validates and normalises the fields of an already parsed JSON object (whose duplicate
    /// keys, if it had any, are gone: prefer [`Tweet::from_json`] for raw bytes).
    pub fn from_map(map: &Map<String, Value>) -> Result<Tweet, TweetError> {
        let mut fields = Fields::default();
        for (key, value) in map {
            if let Some(slot) = fields.slot(key) {
                *slot = Some(value.clone());
            }
        }
        fields.validate()
    }

    /// The country of `pais_codigo`.
    pub fn country(&self) -> &'static Country {
        country::by_alpha2(self.pais_codigo).expect("a tweet's pais_codigo comes from the table")
    }
}

/// Reads a tweet the way [`Tweet::from_json`] does (duplicate keys refused, everything
/// validated again, `pais_codigo` derived from `pais` whatever the input says).
impl<'de> Deserialize<'de> for Tweet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Tweet, D::Error> {
        deserializer.deserialize_map(FieldsVisitor)?.validate().map_err(de::Error::custom)
    }
}

/// The contract's fields of a tweet object, as given, and the first key that appeared twice.
#[derive(Default)]
struct Fields {
    texto: Option<Value>,
    pais: Option<Value>,
    /// `país`, the original assignment's spelling.
    pais_accented: Option<Value>,
    clima: Option<Value>,
    duplicate: Option<String>,
}

impl Fields {
    fn slot(&mut self, key: &str) -> Option<&mut Option<Value>> {
        match key {
            "texto" => Some(&mut self.texto),
            "pais" => Some(&mut self.pais),
            "país" => Some(&mut self.pais_accented),
            "clima" => Some(&mut self.clima),
            _ => None,
        }
    }

    fn validate(self) -> Result<Tweet, TweetError> {
        if let Some(key) = self.duplicate {
            let field = match key.as_str() {
                "texto" => Some("texto"),
                "pais" | "país" => Some("pais"),
                "clima" => Some("clima"),
                _ => None,
            };
            let message = format!("duplicate key {:?}: each key may appear once in a tweet", truncate(&key));
            return Err(TweetError { field, message });
        }
        let texto = match &self.texto {
            None | Some(Value::Null) => return Err(TweetError::field("texto", "is required")),
            Some(v) => string(v, "texto")?,
        };
        let texto = normalise(texto);
        check_chars("texto", &texto, MAX_TEXTO_CHARS, |c| c == '\n' || c == '\t')?;

        let pais = match (&self.pais, &self.pais_accented) {
            (Some(_), Some(_)) => {
                return Err(TweetError::field("pais", "give either `pais` or `país`, not both"));
            }
            (Some(v), None) | (None, Some(v)) if !v.is_null() => string(v, "pais")?,
            _ => return Err(TweetError::field("pais", "is required")),
        };
        let country = resolve_country(pais)?;

        let clima = match &self.clima {
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
        Ok(Tweet { texto, pais: country.es, pais_codigo: country.alpha2, clima })
    }
}

/// `pais` as a client wrote it → its country, or why not.
fn resolve_country(raw: &str) -> Result<&'static Country, TweetError> {
    let trimmed = raw.trim();
    // Whitespace controls (tab, newline) separate words like a space; others are refused.
    check_chars("pais", trimmed, MAX_PAIS_CHARS, char::is_whitespace)?;
    country::resolve(trimmed).ok_or_else(|| {
        TweetError::field(
            "pais",
            format!(
                "pais {:?} is not a country of ISO 3166-1: give its Spanish or English name \
                 (accents optional) or its alpha-2 or alpha-3 code",
                truncate(trimmed)
            ),
        )
    })
}

/// Reads a tweet object key by key: the contract's keys keep their value, other values are
/// skipped unparsed (serde_json skips them without recursion), and every key is remembered to
/// find the first one given twice. The body limit bounds the keys, serde_json's recursion limit
/// (128) the nesting inside a contract field.
struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Fields::default();
        let mut seen = Seen::default();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let first = fields.duplicate.is_none() && !seen.contains(&key);
            match fields.slot(&key) {
                Some(slot) if first => *slot = Some(map.next_value::<Value>()?),
                _ => map.next_value::<IgnoredAny>().map(drop)?,
            }
            if fields.duplicate.is_none() {
                if first {
                    seen.insert(key);
                } else {
                    fields.duplicate = Some(key.into_owned());
                }
            }
        }
        Ok(fields)
    }
}

/// An object's key, borrowed from the body when it holds no escape (`make profile`: a `String`
/// per key and a hashed set of them were a third of reading a tweet).
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key<'de>, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// What a `String` key accepts, borrowing where the deserializer lends.
struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v)))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Key<'de>, E> {
        std::str::from_utf8(v)
            .map(|s| Key(Cow::Owned(s.to_owned())))
            .map_err(|_| E::invalid_value(de::Unexpected::Bytes(v), &self))
    }
}

/// The keys read so far: compared one by one while they are few (every real tweet has four or
/// five), hashed beyond that (a hostile body may hold thousands).
#[derive(Default)]
struct Seen<'de> {
    few: Vec<Cow<'de, str>>,
    many: HashSet<Cow<'de, str>>,
}

impl<'de> Seen<'de> {
    const FEW: usize = 16;

    fn contains(&self, key: &str) -> bool {
        self.few.iter().any(|k| k == key) || self.many.contains(key)
    }

    fn insert(&mut self, key: Cow<'de, str>) {
        if self.few.len() < Self::FEW {
            self.few.push(key);
        } else {
            self.many.insert(key);
        }
    }
}

fn json_error(e: serde_json::Error) -> TweetError {
    let message = match e.classify() {
        // Valid JSON of the wrong shape: "invalid type: sequence, expected a JSON object".
        serde_json::error::Category::Data => e.to_string(),
        _ => format!("malformed JSON: {e}"),
    };
    TweetError { field: None, message }
}

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
    let s = s.trim();
    // Most texts are NFC already (every ASCII one is); the quick check proves it without
    // building a second copy character by character.
    if unicode_normalization::is_nfc_quick(s.chars()) == unicode_normalization::IsNormalized::Yes {
        return s.to_owned();
    }
    s.nfc().collect()
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
    fn accepts_both_spellings_and_resolves_the_country() {
        let a = parse(r#"{"texto":"Hoy llueve","pais":"  guatemala "}"#).unwrap();
        let b = parse(r#"{"texto":"Hoy llueve","país":"GUATEMALA"}"#).unwrap();
        assert_eq!((a.pais, a.pais_codigo), ("Guatemala", "GT"));
        assert_eq!(a, b);
        assert_eq!(a.clima, Clima::Lluvioso);
        assert_eq!(parse(r#"{"texto":"x","pais":"el  SALVADOR"}"#).unwrap().pais, "El Salvador");
        assert_eq!(parse(r#"{"texto":"x","pais":"trinidad Y tobago"}"#).unwrap().pais, "Trinidad y Tobago");
        assert_eq!(parse(r#"{"texto":"x","pais":"costa\trica\n"}"#).unwrap().pais, "Costa Rica");
        let us = parse(r#"{"texto":"x","pais":"EE. UU."}"#).unwrap();
        assert_eq!((us.pais, us.pais_codigo, us.country().en), ("Estados Unidos", "US", "United States"));
    }

    #[test]
    fn every_spelling_of_peru_is_one_country() {
        for pais in ["Peru", "Perú", "PE", "PER", "Ｐｅｒú", "Pe\u{ad}ru", "peru\u{301}", "Pe\u{200b}ru"]
        {
            let t = Tweet::new("x", pais, None).unwrap_or_else(|e| panic!("{pais:?}: {e}"));
            assert_eq!((t.pais, t.pais_codigo), ("Perú", "PE"), "{pais:?}");
        }
    }

    #[test]
    fn an_unknown_country_is_400_naming_pais_and_saying_why() {
        let err = parse(r#"{"texto":"x","pais":"Atlantis"}"#).unwrap_err();
        assert_eq!(err.field, Some("pais"));
        assert!(err.message.starts_with(r#"pais "Atlantis" is not a country of ISO 3166-1"#), "{err}");
        // The echoed value is cut short.
        let long = parse(&format!(r#"{{"texto":"x","pais":"{}"}}"#, "z".repeat(60))).unwrap_err();
        assert!(long.message.len() < 200, "{long}");
    }

    #[test]
    fn pais_codigo_is_derived_never_trusted() {
        let t = parse(r#"{"texto":"x","pais":"Chile","pais_codigo":"PE"}"#).unwrap();
        assert_eq!((t.pais, t.pais_codigo), ("Chile", "CL"));
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"texto":"x","pais":"Chile","pais_codigo":"CL","clima":"desconocido"})
        );
        let forged: Tweet =
            serde_json::from_str(r#"{"texto":"x","pais":"Chile","pais_codigo":"PE","clima":"soleado"}"#)
                .unwrap();
        assert_eq!(forged.pais_codigo, "CL");
    }

    #[test]
    fn duplicate_keys_are_an_error_naming_the_key() {
        let cases = [
            (r#"{"texto":"x","pais":"Chile","pais":"Perú"}"#, Some("pais"), "\"pais\""),
            (r#"{"texto":"x","país":"Chile","país":"Chile"}"#, Some("pais"), "\"país\""),
            (r#"{"texto":"x","texto":"y","pais":"Chile"}"#, Some("texto"), "\"texto\""),
            (r#"{"texto":"x","pais":"Chile","clima":"soleado","clima":null}"#, Some("clima"), "\"clima\""),
            (r#"{"texto":"x","pais":"Chile","origen":1,"origen":2}"#, None, "\"origen\""),
            // Keys are compared after unescaping.
            (r#"{"texto":"x","pais":"Chile","pa\u0069s":"Perú"}"#, Some("pais"), "\"pais\""),
        ];
        for (json, field, key) in cases {
            let err = parse(json).unwrap_err();
            assert_eq!(err.field, field, "{json}: {err}");
            assert!(err.message.starts_with(&format!("duplicate key {key}")), "{json}: {err}");
        }
        // Among many keys, whether the first one was among the first few or not.
        let many: String = (0..40).map(|i| format!(r#","k{i}":{i}"#)).collect();
        for repeated in ["k2", "k30", "k39"] {
            let json = format!(r#"{{"texto":"x","pais":"Chile"{many},"{repeated}":0}}"#);
            let err = parse(&json).unwrap_err();
            assert!(err.message.starts_with(&format!("duplicate key \"{repeated}\"")), "{err}");
        }
        assert!(parse(&format!(r#"{{"texto":"x","pais":"Chile"{many}}}"#)).is_ok());
        // Through serde's Deserialize too.
        assert!(serde_json::from_str::<Tweet>(r#"{"texto":"x","texto":"x","pais":"Chile"}"#).is_err());
        // Only the tweet object's own keys: nested metadata is skipped.
        assert!(parse(r#"{"texto":"x","pais":"Chile","meta":{"a":1,"a":2}}"#).is_ok());
    }

    #[test]
    fn nfc_makes_composed_and_decomposed_accents_equal() {
        let composed = parse("{\"texto\":\"Se\u{00f1}al\",\"pais\":\"Per\u{00fa}\"}").unwrap();
        let decomposed = parse("{\"texto\":\"Sen\u{0303}al\",\"pais\":\"peru\u{0301}\"}").unwrap();
        assert_eq!(composed, decomposed);
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
            (r#"{"texto":"x","pais":"Atlantis"}"#, Some("pais")),
            (r#"{"texto":"a\u0000b","pais":"Chile"}"#, Some("texto")),
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
        let err = parse(&pais).unwrap_err();
        assert_eq!((err.field, err.message.contains("the limit is")), (Some("pais"), true), "{err}");
    }

    #[test]
    fn every_spelling_in_the_table_fits_the_pais_limit() {
        for c in country::all() {
            for spelling in [c.alpha2, c.alpha3, c.es, c.en] {
                assert!(spelling.chars().count() <= MAX_PAIS_CHARS, "{spelling:?}");
                assert!(Tweet::new("x", spelling, None).is_ok(), "{spelling:?}");
            }
        }
    }

    #[test]
    fn hostile_json_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse(&deep).unwrap_err().field, None);
        let deep_field =
            format!(r#"{{"texto":{}{},"pais":"Chile"}}"#, "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse(&deep_field).unwrap_err().message.starts_with("malformed JSON"), "recursion limit");
        // Skipped, not parsed into a tree: deep nesting in an unknown field costs no stack.
        let deep_ignored =
            format!(r#"{{"texto":"x","pais":"Chile","m":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse(&deep_ignored).is_ok());
        assert!(Tweet::from_json(b"{\"texto\":\"\xff\xfe\",\"pais\":\"Chile\"}").is_err());
        assert!(
            parse(r#"{"texto":"x","pais":"Chile"} {}"#).unwrap_err().message.starts_with("malformed JSON")
        );
    }

    #[test]
    fn a_normalised_tweet_parses_to_itself() {
        let t = parse(r#"{"texto":"Viento fuerte","pais":"costa rica"}"#).unwrap();
        let again = Tweet::from_json(&serde_json::to_vec(&t).unwrap()).unwrap();
        assert_eq!(t, again);
    }
}

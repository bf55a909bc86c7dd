//! A password a user chose, checked as NIST SP 800-63B asks: Unicode
//! normalised (NFKC), 8–128 characters by default, not on a list of common
//! and breached passwords, and no composition rules.
//!
//! A password presented at login goes through [`normalise`] too, so that the
//! same password typed in another Unicode form (a ligature, full-width
//! letters, a decomposed accent) still matches its hash.

use std::collections::HashSet;
use std::fmt;
use std::io::Read as _;
use std::sync::LazyLock;

use flate2::read::GzDecoder;
use secrecy::{ExposeSecret, SecretString};
use unicode_normalization::UnicodeNormalization as _;

/// The longest password, in characters after normalisation (SPEC §6).
pub const MAX_LENGTH: usize = 128;

/// Input longer than this many bytes is refused before it is normalised:
/// no 128-character password needs more (NFKC composes at most a few
/// characters into one, each at most 4 bytes), and it bounds the work.
const MAX_INPUT_BYTES: usize = 4096;

/// A password that passed [`Password::parse`], in NFKC form: hash this.
pub struct Password(SecretString);

/// Why a password was refused; [`PasswordError::code`] is stable, the
/// message completes "the password …".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("must be at least {min} characters long")]
    TooShort { min: usize },
    #[error("must be at most 128 characters long")]
    TooLong,
    #[error("must not contain the character U+0000")]
    Nul,
    #[error("is too common: it is on a list of common and breached passwords")]
    Common,
}

impl PasswordError {
    /// A stable machine-readable code, e.g. for a problem+json field error.
    pub fn code(self) -> &'static str {
        match self {
            PasswordError::TooShort { .. } => "password_too_short",
            PasswordError::TooLong => "password_too_long",
            PasswordError::Nul => "password_invalid",
            PasswordError::Common => "password_too_common",
        }
    }
}

impl Password {
    /// Normalises `text` with NFKC, then accepts it when it is `min_length`
    /// to 128 characters long, holds no U+0000 and is not on the bundled
    /// list of common passwords (compared case-insensitively).
    pub fn parse(text: &str, min_length: usize) -> Result<Password, PasswordError> {
        if text.contains('\0') {
            return Err(PasswordError::Nul);
        }
        if text.len() > MAX_INPUT_BYTES {
            return Err(PasswordError::TooLong);
        }
        let normal = normalise(text);
        let length = normal.expose_secret().chars().count();
        if length < min_length {
            return Err(PasswordError::TooShort { min: min_length });
        }
        if length > MAX_LENGTH {
            return Err(PasswordError::TooLong);
        }
        if is_common(normal.expose_secret()) {
            return Err(PasswordError::Common);
        }
        Ok(Password(normal))
    }

    /// The normalised password, for hashing.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The normalised password, for hashing.
    pub fn into_secret(self) -> SecretString {
        self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password([REDACTED])")
    }
}

/// The NFKC form of a password as typed; verify this one at login, the way
/// [`Password::parse`] normalised it before it was hashed.
pub fn normalise(text: &str) -> SecretString {
    let mut normal = String::with_capacity(text.len());
    normal.extend(text.nfkc());
    SecretString::from(normal)
}

/// The form list entries and candidates are compared in.
fn fold(text: &str) -> String {
    text.nfkc().collect::<String>().to_lowercase()
}

/// Whether `password` is on the bundled list, ignoring case.
fn is_common(password: &str) -> bool {
    let folded = SecretString::from(fold(password));
    COMMON.contains(folded.expose_secret())
}

/// The bundled list of common and breached passwords, 55,860 entries, one a
/// line, NFKC-normalised, lowercased, deduplicated, sorted, gzipped. It is
/// the union of
/// - npm `@zxcvbn-ts/language-common` 4.1.3, `src/passwords.json`
///   (49,233 entries; MIT licence, © 2012-2016 Dan Wheeler and Dropbox,
///   Inc., © 2021 @zxcvbn-ts), and
/// - PyPI `Django` 5.2.19, `django/contrib/auth/common-passwords.txt.gz`
///   (19,640 entries, Royce Williams's list; BSD-3-Clause, © Django
///   Software Foundation and individual contributors).
///
/// To rebuild: take both files, apply NFKC and lowercase to every entry, drop
/// empty lines and duplicates, sort, write one a line and `gzip -9 -n`.
const COMMON_GZ: &[u8] = include_bytes!("common-passwords.txt.gz");

/// Decompressed once, on first use (or at start through [`preload`]).
static COMMON: LazyLock<HashSet<Box<str>>> = LazyLock::new(load_common);

fn load_common() -> HashSet<Box<str>> {
    let mut text = String::new();
    if let Err(e) = GzDecoder::new(COMMON_GZ).read_to_string(&mut text) {
        // Cannot happen with the file the unit tests read; carry on with
        // whatever decoded rather than refuse every password.
        tracing::error!("the bundled common-password list is unreadable: {e}");
    }
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| fold(line).into_boxed_str())
        .collect()
}

/// Loads the common-password list now and returns its size, so that the
/// first registration does not pay for it.
pub fn preload() -> usize {
    COMMON.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_list_is_large_and_holds_the_usual_suspects() {
        assert!(preload() >= 20_000, "only {} entries", preload());
        for common in ["password", "123456", "password123", "qwertyuiop", "iloveyou"] {
            assert!(COMMON.contains(common), "{common}");
        }
        // tests/api/helpers.rs logs in with this one.
        assert!(!is_common("correct horse battery staple"));
    }

    #[test]
    fn accepts_and_refuses_as_the_table_says() {
        use PasswordError::*;
        let long_ok = "x".repeat(120) + "gatehous";
        let too_long = "x".repeat(129);
        let huge = "x".repeat(MAX_INPUT_BYTES + 1);
        let cases: Vec<(&str, usize, Result<(), PasswordError>)> = vec![
            ("correct horse battery staple", 8, Ok(())),
            ("zq8!vW2k", 8, Ok(())),
            ("short", 8, Err(TooShort { min: 8 })),
            ("", 8, Err(TooShort { min: 8 })),
            ("sevennn", 8, Err(TooShort { min: 8 })),
            ("a longer one", 16, Err(TooShort { min: 16 })),
            (&long_ok, 8, Ok(())),
            (&too_long, 8, Err(TooLong)),
            (&huge, 8, Err(TooLong)),
            ("nul\0inside it", 8, Err(Nul)),
            ("\0", 8, Err(Nul)),
            ("password", 8, Err(Common)),
            ("PassWord123", 8, Err(Common)),
            ("QWERTYUIOP", 8, Err(Common)),
            // Full-width letters are "password" after NFKC.
            (
                "\u{FF50}\u{FF41}\u{FF53}\u{FF53}\u{FF57}\u{FF4F}\u{FF52}\u{FF44}",
                8,
                Err(Common),
            ),
            // No composition rules: all letters, all digits, spaces are fine.
            ("bluemoonriverside", 8, Ok(())),
            ("8675309271828", 8, Ok(())),
            ("a b c d e f g h", 8, Ok(())),
            // Length is counted after normalisation: "ﬁ" becomes "fi" …
            ("abcdex\u{FB01}", 8, Ok(())),
            // … and "e" + combining acute becomes one "é".
            (
                "e\u{301}e\u{301}e\u{301}e\u{301}e\u{301}",
                8,
                Err(TooShort { min: 8 }),
            ),
            ("ünïcödé pässwörd", 8, Ok(())),
        ];
        for (text, min, want) in cases {
            let got = Password::parse(text, min).map(|_| ());
            assert_eq!(got, want, "{text:?} with min {min}");
        }
    }

    #[test]
    fn every_list_entry_of_a_valid_length_is_refused_in_any_case() {
        for entry in COMMON.iter() {
            let length = entry.chars().count();
            if (8..=MAX_LENGTH).contains(&length) {
                assert_eq!(
                    Password::parse(entry, 8).map(|_| ()),
                    Err(PasswordError::Common),
                    "{entry}"
                );
                let upper = entry.to_uppercase();
                if upper.chars().count() == length {
                    assert_eq!(
                        Password::parse(&upper, 8).map(|_| ()),
                        Err(PasswordError::Common),
                        "{upper}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_kept_password_is_the_nfkc_form() {
        let pw = Password::parse("o\u{FB03}ce hours, \u{FF21}\u{FF22}", 8).unwrap();
        assert_eq!(pw.expose(), "office hours, AB");
        assert_eq!(pw.into_secret().expose_secret(), "office hours, AB");
        assert_eq!(normalise("o\u{FB03}ce").expose_secret(), "office");
        assert_eq!(
            normalise("caf\u{E9}").expose_secret(),
            normalise("cafe\u{301}").expose_secret()
        );
        // Case is kept: only the list look-up ignores it.
        assert_eq!(normalise("MiXeD").expose_secret(), "MiXeD");
    }

    #[test]
    fn codes_are_stable_and_messages_say_what_is_wrong() {
        assert_eq!(PasswordError::TooShort { min: 8 }.code(), "password_too_short");
        assert_eq!(PasswordError::TooLong.code(), "password_too_long");
        assert_eq!(PasswordError::Nul.code(), "password_invalid");
        assert_eq!(PasswordError::Common.code(), "password_too_common");
        assert_eq!(
            PasswordError::TooShort { min: 10 }.to_string(),
            "must be at least 10 characters long"
        );
        assert!(PasswordError::Common.to_string().contains("common"));
    }

    #[test]
    fn debug_prints_no_secret() {
        let pw = Password::parse("correct horse battery staple", 8).unwrap();
        let shown = format!("{pw:?}");
        assert!(!shown.contains("horse"), "{shown}");
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    /// The list entries of a valid length, in a stable order.
    static LISTED: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
        let mut entries: Vec<&'static str> = COMMON
            .iter()
            .map(|e| &**e)
            .filter(|e| (8..=MAX_LENGTH).contains(&e.chars().count()))
            .collect();
        entries.sort_unstable();
        entries
    });

    fn candidate() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9 ]{0,140}",
            "\\PC{0,140}",
            // Characters NFKC changes: ligatures, full-width, combining marks, ℌ, ①.
            "[a-z\\x{FB00}-\\x{FB06}\\x{FF01}-\\x{FF5E}\\x{300}-\\x{36F}\\x{210C}\\x{2460}-\\x{2473}\\x{FDFA}]{0,140}",
            any::<String>(),
            // Around the byte cap.
            ("[a-z]{4090,4100}").boxed(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parse_never_panics_and_keeps_only_valid_lengths(text in candidate(), min in 1usize..=64) {
            let normal = normalise(&text);
            let length = normal.expose_secret().chars().count();
            match Password::parse(&text, min) {
                Ok(pw) => {
                    prop_assert_eq!(pw.expose(), normal.expose_secret());
                    prop_assert!((min..=MAX_LENGTH).contains(&length), "{} chars accepted", length);
                    prop_assert!(!pw.expose().contains('\0'));
                    prop_assert!(!is_common(pw.expose()));
                }
                Err(PasswordError::Nul) => prop_assert!(text.contains('\0')),
                Err(PasswordError::TooShort { min: m }) => {
                    prop_assert_eq!(m, min);
                    prop_assert!(length < min);
                }
                Err(PasswordError::TooLong) => {
                    prop_assert!(length > MAX_LENGTH || text.len() > MAX_INPUT_BYTES);
                }
                Err(PasswordError::Common) => prop_assert!(is_common(normal.expose_secret())),
            }
        }

        #[test]
        fn the_default_policy_accepts_8_to_128_characters_after_nfkc(text in candidate()) {
            if Password::parse(&text, 8).is_ok() {
                let length = normalise(&text).expose_secret().chars().count();
                prop_assert!((8..=128).contains(&length), "{} chars accepted", length);
            }
        }

        #[test]
        fn normalising_is_idempotent_so_login_matches_registration(text in candidate()) {
            let once = normalise(&text);
            let twice = normalise(once.expose_secret());
            prop_assert_eq!(once.expose_secret(), twice.expose_secret());
            if let Ok(pw) = Password::parse(&text, 8) {
                // What a login normalises is what registration hashed.
                let again = normalise(pw.expose());
                prop_assert_eq!(pw.expose(), again.expose_secret());
                prop_assert!(Password::parse(pw.expose(), 8).is_ok());
            }
        }

        #[test]
        fn list_entries_are_refused_whatever_their_case(
            index in any::<prop::sample::Index>(),
            upper in any::<bool>(),
        ) {
            let entry = *index.get(&LISTED);
            let text = if upper { entry.to_uppercase() } else { entry.to_owned() };
            if fold(&text) == entry {
                prop_assert_eq!(Password::parse(&text, 8).map(|_| ()), Err(PasswordError::Common));
            }
        }
    }
}

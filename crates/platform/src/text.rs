//! Free text at the edges: one rule for every service's names, titles and addresses, and
//! [`text_type!`](crate::text_type) to declare a newtype that only holds text that passed it.

use crate::status::InvalidField;

/// Trimmed text without control characters other than newlines and tabs: at most `max`
/// characters as sent (what the API's documented `maxLength` says of the value a client sends,
/// so padding cannot carry a longer value past it), and at least `min` once trimmed.
pub fn bounded(field: &'static str, input: &str, min: usize, max: usize) -> Result<String, InvalidField> {
    if input.chars().count() > max {
        return Err(InvalidField::new(field, format!("must be at most {max} characters")));
    }
    let text = input.trim();
    let len = text.chars().count();
    if len < min {
        return Err(InvalidField::new(
            field,
            if min == 1 {
                "must not be empty".to_owned()
            } else {
                format!("must be at least {min} characters")
            },
        ));
    }
    if text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(InvalidField::new(field, "must not contain control characters"));
    }
    Ok(text.to_owned())
}

/// Declares a newtype over [`bounded`] text: `text_type!(/// doc, Title, "title", 1, 300);`
/// gives `Title::parse`, `Title::as_str` and `Title::MAX_CHARS`.
#[macro_export]
macro_rules! text_type {
    ($(#[$doc:meta])* $name:ident, $field:literal, $min:expr, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            pub const MAX_CHARS: usize = $max;

            pub fn parse(input: &str) -> Result<Self, $crate::status::InvalidField> {
                $crate::text::bounded($field, input, $min, $max).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::bounded;

    #[test]
    fn bounded_text_is_trimmed_and_counted_in_characters() {
        assert_eq!(bounded("f", "  été  ", 1, 7).unwrap(), "été");
        assert_eq!(bounded("f", "été!", 1, 3).unwrap_err().reason, "must be at most 3 characters");
    }

    #[test]
    fn the_most_characters_count_as_sent_so_padding_cannot_carry_more_past_the_limit() {
        let padded = format!("\t {}\n", "*".repeat(300));
        assert_eq!(bounded("title", &padded, 1, 300).unwrap_err().reason, "must be at most 300 characters");
        assert_eq!(bounded("title", &"*".repeat(300), 1, 300).unwrap().len(), 300);
    }

    #[test]
    fn bounded_text_names_the_field_and_the_minimum() {
        let empty = bounded("title", "   ", 1, 10).unwrap_err();
        assert_eq!((empty.field, empty.reason.as_str()), ("title", "must not be empty"));
        assert_eq!(bounded("f", "ab", 3, 10).unwrap_err().reason, "must be at least 3 characters");
        assert_eq!(bounded("f", "", 0, 10).unwrap(), "");
    }

    #[test]
    fn bounded_text_keeps_newlines_and_tabs_but_refuses_other_control_characters() {
        assert_eq!(bounded("f", "a\nb\tc", 1, 10).unwrap(), "a\nb\tc");
        assert!(bounded("f", "a\u{7}b", 1, 10).is_err());
        assert!(bounded("f", "a\u{0}b", 1, 10).is_err());
    }
}

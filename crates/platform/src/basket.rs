//! The rules of a basket, one definition for the services that take one: orders checks the
//! client's basket, books checks the reservation orders asks for (each service checks its own
//! input, by the same rules).

use crate::status::InvalidField;

/// The most lines one basket may have.
pub(crate) const MAX_LINES: usize = 100;
/// The most units of one book per basket.
pub(crate) const MAX_QUANTITY: i64 = 1000;
/// The longest book id a line may name.
pub(crate) const MAX_BOOK_ID: usize = 64;

/// 1 to [`MAX_LINES`] lines of (book id, quantity), 1 to [`MAX_QUANTITY`] units each, each book
/// once.
pub fn check<'a>(lines: impl ExactSizeIterator<Item = (&'a str, i64)>) -> Result<(), InvalidField> {
    if lines.len() == 0 || lines.len() > MAX_LINES {
        return Err(InvalidField::new("lines", format!("must have 1 to {MAX_LINES} lines")));
    }
    let mut seen = std::collections::HashSet::new();
    for (book_id, quantity) in lines {
        if book_id.is_empty() || book_id.len() > MAX_BOOK_ID {
            return Err(InvalidField::new("lines.book_id", format!("must be 1 to {MAX_BOOK_ID} characters")));
        }
        if !(1..=MAX_QUANTITY).contains(&quantity) {
            return Err(InvalidField::new("lines.quantity", format!("must be between 1 and {MAX_QUANTITY}")));
        }
        if !seen.insert(book_id) {
            return Err(InvalidField::new("lines.book_id", format!("{book_id} appears twice")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_basket_has_lines_of_bounded_quantity_each_book_once() {
        assert!(check([("a", 1), ("b", MAX_QUANTITY)].into_iter()).is_ok());
        assert_eq!(check(std::iter::empty::<(&str, i64)>()).unwrap_err().field, "lines");
        assert_eq!(check([("a", 0)].into_iter()).unwrap_err().field, "lines.quantity");
        assert_eq!(check([("a", MAX_QUANTITY + 1)].into_iter()).unwrap_err().field, "lines.quantity");
        assert_eq!(check([("a", 1), ("a", 2)].into_iter()).unwrap_err().field, "lines.book_id");
        assert_eq!(check([("", 1)].into_iter()).unwrap_err().field, "lines.book_id");
        let many: Vec<(String, i64)> = (0..=MAX_LINES).map(|i| (i.to_string(), 1)).collect();
        assert_eq!(check(many.iter().map(|(b, q)| (b.as_str(), *q))).unwrap_err().field, "lines");
    }
}

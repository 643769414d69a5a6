//! Paging of listings, one rule for every service: `page` from 1, `limit` 1 to 100 (20 by
//! default), and `0` for either meaning its default, as proto3 cannot tell unset from zero.

use crate::status::InvalidField;

/// Which slice of a listing to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    page: u32,
    limit: u32,
}

impl PageRequest {
    pub const DEFAULT_LIMIT: u32 = 20;
    pub const MAX_LIMIT: u32 = 100;
    /// Deep pages cost a scan each; past this, clients should narrow the query.
    pub const MAX_PAGE: u32 = 10_000;

    /// `0` means "the default" for both, as proto3 cannot tell unset from zero.
    pub fn parse(page: i32, limit: i32) -> Result<Self, InvalidField> {
        let page = match page {
            0 => 1,
            p if p < 0 => return Err(InvalidField::new("page", "must be 1 or more")),
            p => p as u32,
        };
        if page > Self::MAX_PAGE {
            return Err(InvalidField::new("page", format!("must be at most {}", Self::MAX_PAGE)));
        }
        let limit = match limit {
            0 => Self::DEFAULT_LIMIT,
            l if l < 0 || l as u32 > Self::MAX_LIMIT => {
                return Err(InvalidField::new("limit", format!("must be between 1 and {}", Self::MAX_LIMIT)));
            }
            l => l as u32,
        };
        Ok(Self { page, limit })
    }

    pub fn page(&self) -> u32 {
        self.page
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    pub fn offset(&self) -> i64 {
        i64::from(self.page - 1) * i64::from(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_the_default_and_bounds_are_enforced() {
        let p = PageRequest::parse(0, 0).unwrap();
        assert_eq!((p.page(), p.limit(), p.offset()), (1, PageRequest::DEFAULT_LIMIT, 0));
        let p = PageRequest::parse(3, 10).unwrap();
        assert_eq!(p.offset(), 20);
        assert_eq!(PageRequest::parse(-1, 10).unwrap_err().field, "page");
        assert_eq!(PageRequest::parse(1, 101).unwrap_err().field, "limit");
        assert_eq!(PageRequest::parse(1, -5).unwrap_err().field, "limit");
        assert_eq!(PageRequest::parse(PageRequest::MAX_PAGE as i32 + 1, 10).unwrap_err().field, "page");
    }
}

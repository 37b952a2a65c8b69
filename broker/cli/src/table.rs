//! The CLI's plain-text tables: each column as wide as its widest cell, columns two
//! spaces apart, no trailing spaces.

/// `rows` (the header first) as lines, the columns numbered in `right` aligned
/// right (numbers), the others left.
pub(crate) fn render<const N: usize>(rows: &[[String; N]], right: &[usize]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, width))| {
                if right.contains(&c) {
                    format!("{cell:>width$}")
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

//! The arm64 Image header (the first 64 bytes of Kiln's arm64 kernel, as
//! arch/arm64's entry.S writes them): `text_offset` at byte 8, `image_size`
//! at byte 16 (.bss included), the magic `ARM\x64` at byte 56.

/// Where and how large the kernel is once loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Physical address of the kernel's first byte: RAM's base (2 MiB
    /// aligned) plus `text_offset`. Kiln's kernel is linked there.
    pub load: u64,
    /// Bytes from `load` the kernel owns (the file, then .bss and stacks).
    pub size: u64,
}

/// Why an Image cannot be entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageError {
    /// Shorter than its header, or the magic is missing.
    NotAnImage,
    /// `image_size` is smaller than the file.
    SizeTooSmall,
}

/// Reads the header of `image` for RAM starting at `ram_base`.
pub fn placement(image: &[u8], ram_base: u64) -> Result<Placement, ImageError> {
    if image.len() < 64 || &image[56..60] != b"ARM\x64" {
        return Err(ImageError::NotAnImage);
    }
    let word = |at: usize| u64::from_le_bytes(image[at..at + 8].try_into().unwrap());
    let (text_offset, size) = (word(8), word(16));
    if size < image.len() as u64 {
        return Err(ImageError::SizeTooSmall);
    }
    Ok(Placement {
        load: (ram_base & !0x1f_ffff) + text_offset,
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text_offset: u64, size: u64) -> [u8; 64] {
        let mut h = [0u8; 64];
        h[8..16].copy_from_slice(&text_offset.to_le_bytes());
        h[16..24].copy_from_slice(&size.to_le_bytes());
        h[56..60].copy_from_slice(b"ARM\x64");
        h
    }

    #[test]
    fn the_kernel_goes_at_ram_base_plus_text_offset() {
        assert_eq!(
            placement(&header(0x80000, 0x20_0000), 0x4000_0000),
            Ok(Placement {
                load: 0x4008_0000,
                size: 0x20_0000
            })
        );
    }

    #[test]
    fn other_files_are_refused() {
        assert_eq!(
            placement(b"MZ not an image", 0x4000_0000),
            Err(ImageError::NotAnImage)
        );
        let mut h = header(0x80000, 0x20_0000);
        h[56] = b'X';
        assert_eq!(placement(&h, 0x4000_0000), Err(ImageError::NotAnImage));
        assert_eq!(
            placement(&header(0x80000, 16), 0x4000_0000),
            Err(ImageError::SizeTooSmall)
        );
    }
}

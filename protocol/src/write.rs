//! Writing messages without copying pixels.
//!
//! A FRAME_REQUEST goes out as one vectored write: the 56-byte prefix, then
//! the caller's slices (planes or rows of the mapped frame) exactly as they
//! are. Nothing is copied into an intermediate buffer.

use std::io::{self, IoSlice, Write};

use crate::message::FrameRequest;

/// Writes every byte of `bufs`, looping over partial vectored writes.
pub fn write_all_vectored<W: Write + ?Sized>(
    w: &mut W,
    mut bufs: &mut [IoSlice<'_>],
) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "peer stopped accepting data",
                ))
            }
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes a FRAME_REQUEST whose pixels are the concatenation of `pixels`
/// (empty slices are fine). With `pixels` empty and `resource_id != 0` the
/// request carries no pixels (flag clear). Returns the bytes written.
pub fn write_frame_request<W: Write + ?Sized>(
    w: &mut W,
    session_id: u16,
    req: &FrameRequest,
    pixels: &[&[u8]],
) -> io::Result<usize> {
    let pixel_len: usize = pixels.iter().map(|p| p.len()).sum();
    let with_pixels = !(pixels.is_empty() && req.resource_id != 0);
    let prefix = req.encode_prefix(session_id, with_pixels.then_some(pixel_len));
    let mut slices = Vec::with_capacity(pixels.len() + 1);
    slices.push(IoSlice::new(&prefix));
    slices.extend(
        pixels
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| IoSlice::new(p)),
    );
    write_all_vectored(w, &mut slices)?;
    Ok(prefix.len() + pixel_len)
}

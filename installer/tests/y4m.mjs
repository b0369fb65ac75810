// Makes a Y4M video (what Chromium's fake camera plays: --use-file-for-fake-video-capture) from a
// PNG label rendered by `qr render`: the label centred on a white 640x480 frame, grey only
// (chroma planes at 128), a few identical frames (Chromium loops the file).
import { readFileSync, writeFileSync } from "node:fs";
import { PNG } from "pngjs";

/** Writes `out` (.y4m): `frames` frames of `width`x`height` showing the PNG at `png`. */
export function pngToY4m(png, out, { width = 640, height = 480, frames = 5 } = {}) {
  const img = PNG.sync.read(readFileSync(png));
  const scale = Math.min(1, (height - 40) / img.height, (width - 40) / img.width);
  const w = Math.floor(img.width * scale);
  const h = Math.floor(img.height * scale);
  const x0 = Math.floor((width - w) / 2);
  const y0 = Math.floor((height - h) / 2);
  const y = Buffer.alloc(width * height, 235); // white (BT.601 video range)
  for (let j = 0; j < h; j++) {
    for (let i = 0; i < w; i++) {
      // Nearest neighbour keeps the modules' edges sharp.
      const sx = Math.min(img.width - 1, Math.floor(i / scale));
      const sy = Math.min(img.height - 1, Math.floor(j / scale));
      const o = (sy * img.width + sx) * 4;
      const luma = 0.299 * img.data[o] + 0.587 * img.data[o + 1] + 0.114 * img.data[o + 2];
      y[(y0 + j) * width + x0 + i] = Math.round(16 + (luma * 219) / 255);
    }
  }
  const chroma = Buffer.alloc((width / 2) * (height / 2) * 2, 128);
  const parts = [Buffer.from(`YUV4MPEG2 W${width} H${height} F10:1 Ip A1:1 C420jpeg\n`)];
  for (let f = 0; f < frames; f++) parts.push(Buffer.from("FRAME\n"), y, chroma);
  writeFileSync(out, Buffer.concat(parts));
}

// Reading a QR code: from the camera (getUserMedia) or a photo, with the browser's
// BarcodeDetector where it exists and zxing-wasm (bundled, served by the join server) elsewhere.

import { prepareZXingModule, readBarcodes } from "zxing-wasm/reader";
import wasmUrl from "zxing-wasm/reader/zxing_reader.wasm?url";

// The WASM file is the app's own (never a CDN's).
prepareZXingModule({
  overrides: {
    locateFile: (path: string, prefix: string) => (path.endsWith(".wasm") ? new URL(wasmUrl, document.baseURI).href : prefix + path),
  },
  fireImmediately: false,
});

interface Detector {
  detect(source: ImageBitmapSource): Promise<{ rawValue: string }[]>;
}

let detector: Promise<Detector | null> | null = null;

/** The browser's BarcodeDetector for QR codes, or null where there is none. */
function nativeDetector(): Promise<Detector | null> {
  detector ??= (async () => {
    const BD = (globalThis as unknown as { BarcodeDetector?: { new (o: object): Detector; getSupportedFormats(): Promise<string[]> } }).BarcodeDetector;
    if (!BD) return null;
    try {
      const formats = await BD.getSupportedFormats();
      return formats.includes("qr_code") ? new BD({ formats: ["qr_code"] }) : null;
    } catch {
      return null;
    }
  })();
  return detector;
}

/** Which decoder reads codes here: "BarcodeDetector" or "zxing-wasm". */
export async function decoderName(): Promise<string> {
  return (await nativeDetector()) ? "BarcodeDetector" : "zxing-wasm";
}

/** The text of the first QR code in an image, or null. */
async function decodeImageData(img: ImageData): Promise<string | null> {
  const native = await nativeDetector();
  if (native) {
    const found = await native.detect(img);
    return found[0]?.rawValue ?? null;
  }
  const found = await readBarcodes(img, { formats: ["QRCode"], tryHarder: true, maxNumberOfSymbols: 1 });
  return found.find((r) => r.isValid)?.text ?? null;
}

function grab(source: CanvasImageSource, w: number, h: number, canvas: HTMLCanvasElement): ImageData {
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  if (!ctx) throw new Error("no 2D canvas");
  ctx.drawImage(source, 0, 0, w, h);
  return ctx.getImageData(0, 0, w, h);
}

/** Reads the first QR code of a photo (a file the user chose or took). */
export async function decodePhoto(file: Blob): Promise<string | null> {
  const bitmap = await createImageBitmap(file);
  // Large photos are scaled down: a label fills much of the frame, and decoding stays quick.
  const scale = Math.min(1, 1600 / Math.max(bitmap.width, bitmap.height));
  const img = grab(bitmap, Math.round(bitmap.width * scale), Math.round(bitmap.height * scale), document.createElement("canvas"));
  bitmap.close();
  return decodeImageData(img);
}

const FIRST_FRAME_MS = 500;

/** A running camera scan; `stop()` ends it and releases the camera. */
export interface CameraScan {
  stop(): void;
}

/**
 * Starts the (rear) camera into `video` and decodes frames until one holds a QR code, which is
 * passed to `onCode` once; the camera is then released.
 */
export async function startCamera(video: HTMLVideoElement, onCode: (text: string) => void): Promise<CameraScan> {
  const stream = await navigator.mediaDevices.getUserMedia({
    video: { facingMode: { ideal: "environment" }, width: { ideal: 1280 }, height: { ideal: 720 } },
    audio: false,
  });
  video.srcObject = stream;
  video.setAttribute("playsinline", "");
  video.muted = true;
  await video.play();
  const canvas = document.createElement("canvas");
  let running = true;
  let timer: number | undefined;
  const stop = () => {
    running = false;
    if (timer !== undefined) clearTimeout(timer);
    for (const t of stream.getTracks()) t.stop();
    video.srcObject = null;
  };
  const tick = async () => {
    if (!running) return;
    try {
      if (video.videoWidth > 0) {
        const text = await decodeImageData(grab(video, video.videoWidth, video.videoHeight, canvas));
        if (text !== null && running) {
          stop();
          onCode(text);
          return;
        }
      }
    } catch {
      // A frame that cannot be read is skipped; the next one is tried.
    }
    if (running) timer = window.setTimeout(tick, 200);
  };
  // The first frame is read after half a second: a camera's exposure and focus settle first.
  timer = window.setTimeout(tick, FIRST_FRAME_MS);
  return { stop };
}

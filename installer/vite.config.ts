// The build the join server embeds: fixed file names (no content hashes), so the server's table of
// embedded files (joinserver/src/api/installer.rs) names them; relative URLs, so the app works
// under /install/ on HTTP or HTTPS alike.
import { defineConfig } from "vite";

export default defineConfig({
  base: "./",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    rollupOptions: {
      output: {
        entryFileNames: "assets/app.js",
        chunkFileNames: "assets/[name].js",
        assetFileNames: "assets/[name][extname]",
      },
    },
  },
});

// Uploads: filled in by the upload engine (parallel transfers, multipart sessions, resume).
export function mountUploads(container, options) {
  return { add(files) { throw new Error("uploads are not available yet"); } };
}

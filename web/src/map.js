// The map of the mesh around the phone, on Leaflet: triangles drawn from the service's GeoJSON
// polygons over a plain background, or over raster tiles when the server names a tile URL.
// Colours are CSS classes (style.css): a triangle's look follows its state and whether it can be
// mined now.

import L from "leaflet";
import "leaflet/dist/leaflet.css";

const ring = (polygon) => polygon.coordinates[0].map(([lon, lat]) => [lat, lon]);

function label(text) {
  const span = document.createElement("span");
  span.textContent = text;
  return span;
}

export class MeshMap {
  constructor(element, settings) {
    this.map = L.map(element, { zoomControl: true, attributionControl: Boolean(settings.tileUrl) });
    if (settings.tileUrl) {
      L.tileLayer(settings.tileUrl, { attribution: settings.tileAttribution ?? "", maxZoom: 19 }).addTo(this.map);
    }
    this.triangles = L.layerGroup().addTo(this.map);
    this.accuracy = null;
    this.you = null;
    this.framedLevel = null;
    this.map.setView([0, 0], 2);
  }

  showPosition(position) {
    const at = [position.lat, position.lon];
    if (!this.you) {
      this.accuracy = L.circle(at, { radius: position.accuracy, className: "you-accuracy", interactive: false });
      this.you = L.circleMarker(at, { radius: 7, className: "you" }).bindTooltip(label("You are here"));
      this.accuracy.addTo(this.map);
      this.you.addTo(this.map);
      this.map.setView(at, 15);
    }
    this.accuracy.setLatLng(at).setRadius(position.accuracy);
    this.you.setLatLng(at);
  }

  // `coarse`: the level above the active one, for context (a subdivided parent shows as such);
  // `around`: the active level; `current`: the id of the triangle the phone is in; `mineable`
  // whether a proof there would be accepted now. Triangles not in the mesh are left out.
  showTriangles({ coarse, around, current, mineable, subdivideAt }) {
    this.triangles.clearLayers();
    this.current = null;
    const existing = (triangles) => triangles.filter((t) => t.exists);
    for (const triangle of existing(coarse).filter((t) => t.state !== "subdivided")) {
      this.draw(triangle, `tri tri-coarse tri-${triangle.state}`);
    }
    for (const triangle of existing(around)) {
      const here = triangle.triangleId === current;
      const layer = this.draw(triangle, `tri tri-${triangle.state}${here ? " tri-current" : ""}`);
      if (here) this.current = layer;
      if (here || triangle.clicks > 0) {
        const text = triangle.state === "active" ? `${triangle.clicks}/${subdivideAt}` : triangle.state;
        layer.bindTooltip(label(text), { permanent: true, direction: "center", className: "clicks" });
      }
    }
    // A subdivided parent is outlined over its children, so the split shows.
    for (const triangle of existing(coarse).filter((t) => t.state === "subdivided")) {
      this.draw(triangle, "tri tri-coarse tri-subdivided").bringToFront();
    }
    this.setMineable(mineable);
    // The phone stays drawn above the mesh.
    this.accuracy?.bringToFront();
    this.you?.bringToFront();
    const level = around[0]?.level;
    const yours = around.find((t) => t.triangleId === current);
    if (yours && level !== this.framedLevel) {
      // Framed once per level, on the phone's triangle and its neighbours: a subdivision zooms in.
      this.map.fitBounds(L.polygon(ring(yours.polygon)).getBounds().pad(1.2));
      this.framedLevel = level;
    }
  }

  // The phone's triangle turns from "wait" to "mineable" when the moratorium ends, without a redraw.
  setMineable(mineable) {
    const path = this.current?.getElement();
    path?.classList.toggle("tri-mineable", mineable);
    path?.classList.toggle("tri-waiting", !mineable);
  }

  draw(triangle, className) {
    const layer = L.polygon(ring(triangle.polygon), { className });
    layer.bindPopup(() => {
      const text = document.createElement("div");
      text.className = "popup";
      for (const line of [triangle.triangleId, `level ${triangle.level} · ${triangle.state} · ${triangle.clicks} clicks`]) {
        text.append(label(line), document.createElement("br"));
      }
      return text;
    });
    layer.addTo(this.triangles);
    const path = layer.getElement();
    path.dataset.triangleId = triangle.triangleId;
    path.dataset.state = triangle.state;
    path.dataset.clicks = String(triangle.clicks);
    return layer;
  }
}

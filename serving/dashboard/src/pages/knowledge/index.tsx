/** Knowledge: collections and their documents, adding documents (admins), index runs with live
 * progress, and the retrieval playground. */
import { useEffect, useState } from "react";
import { useCollections, useInfo, usePermissions } from "../../api/hooks";
import { Code, EmptyState, PageHeader } from "../../components/ui";
import { AddDocuments } from "./AddDocuments";
import { Collections, Documents } from "./Collections";
import { Runs } from "./Runs";
import { useRunTracking } from "./runs";
import { SearchPlayground } from "./SearchPlayground";

export default function KnowledgePage() {
  const { isAdmin, canUse } = usePermissions();
  const { data: info } = useInfo();
  const collections = useCollections();
  const [selected, setSelected] = useState<string | null>(null);
  const [target, setTarget] = useState("");
  useRunTracking();

  useEffect(() => {
    const names = collections.data?.data.map((c) => c.name) ?? [];
    if (!selected && names.length) setSelected(names.includes(info?.default_collection ?? "") ? info!.default_collection : names[0]!);
  }, [collections.data, selected, info]);
  useEffect(() => {
    if (!target && (selected || info?.default_collection)) setTarget(selected ?? info?.default_collection ?? "default");
  }, [selected, target, info]);

  return (
    <div className="space-y-4">
      <PageHeader title="Knowledge" description="Your collections, what is in them, and how retrieval finds it." />
      {!canUse && (
        <EmptyState title="Your key is read-only">
          Collections and search need a key with the user role (<Code>impetus keys create --name me --role user</Code>).
        </EmptyState>
      )}
      {canUse && <Collections selected={selected} onSelect={setSelected} />}
      {canUse && selected && <Documents collection={selected} />}
      {isAdmin && <AddDocuments collection={target} onCollection={setTarget} />}
      {isAdmin && <Runs />}
      {canUse && <SearchPlayground collection={selected ?? target} />}
    </div>
  );
}

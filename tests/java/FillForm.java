// Fills XForms with JavaRosa (ODK Collect's form engine, shipped in pyxform's
// ODK_Validate.jar) and serialises the instances the way Collect does.
// Usage: java -cp ODK_Validate.jar:. FillForm form1.xml out1.xml [form2.xml out2.xml ...]
// For each binary question (image, audio, file) it answers a file name and prints
// "ATTACH <out.xml> <name>" so the caller can send a file under that name.
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.util.ArrayList;
import java.util.Date;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.javarosa.core.model.Constants;
import org.javarosa.core.model.FormDef;
import org.javarosa.core.model.FormIndex;
import org.javarosa.core.model.SelectChoice;
import org.javarosa.core.model.data.DateData;
import org.javarosa.core.model.data.DateTimeData;
import org.javarosa.core.model.data.DecimalData;
import org.javarosa.core.model.data.GeoPointData;
import org.javarosa.core.model.data.IAnswerData;
import org.javarosa.core.model.data.IntegerData;
import org.javarosa.core.model.data.SelectMultiData;
import org.javarosa.core.model.data.SelectOneData;
import org.javarosa.core.model.data.StringData;
import org.javarosa.core.model.data.TimeData;
import org.javarosa.core.model.data.helper.Selection;
import org.javarosa.core.model.instance.InstanceInitializationFactory;
import org.javarosa.core.services.IPropertyManager;
import org.javarosa.core.services.PropertyManager;
import org.javarosa.core.services.properties.IPropertyRules;
import org.javarosa.form.api.FormEntryController;
import org.javarosa.form.api.FormEntryModel;
import org.javarosa.form.api.FormEntryPrompt;
import org.javarosa.model.xform.XFormSerializingVisitor;
import org.javarosa.xform.util.XFormUtils;

public class FillForm {
    /** Device properties, as Collect's PropertyManager answers them (deviceid …). */
    static class Properties implements IPropertyManager {
        private final Map<String, List<String>> values = new HashMap<>();

        Properties() {
            setProperty("deviceid", "collect:synthetic0001");
            setProperty("username", "kofi");
        }

        public List<String> getProperty(String name) { return values.get(name); }
        public void setProperty(String name, String value) {
            List<String> list = new ArrayList<>();
            list.add(value);
            values.put(name, list);
        }
        public void setProperty(String name, List<String> value) { values.put(name, value); }
        public String getSingularProperty(String name) {
            List<String> v = values.get(name);
            return v == null || v.isEmpty() ? null : v.get(0);
        }
        public void addRules(IPropertyRules rules) { }
        public List<IPropertyRules> getRules() { return new ArrayList<>(); }
    }

    public static void main(String[] args) throws Exception {
        PropertyManager.setPropertyManager(new Properties());
        for (int i = 0; i + 1 < args.length; i += 2) {
            fill(args[i], args[i + 1]);
        }
    }

    static IAnswerData answer(FormEntryPrompt p, int n, String out) {
        switch (p.getDataType()) {
            case Constants.DATATYPE_INTEGER: return new IntegerData(1 + n % 5);
            case Constants.DATATYPE_DECIMAL: return new DecimalData(1.5);
            case Constants.DATATYPE_DATE: return new DateData(new Date());
            case Constants.DATATYPE_TIME: return new TimeData(new Date());
            case Constants.DATATYPE_DATE_TIME: return new DateTimeData(new Date());
            case Constants.DATATYPE_GEOPOINT:
                return new GeoPointData(new double[] {8.484, -13.234, 25.0, 4.0});
            case Constants.DATATYPE_BINARY: {
                String name = "file" + n + ".jpg";
                System.out.println("ATTACH " + out + " " + name);
                return new StringData(name);
            }
            case Constants.DATATYPE_CHOICE: {
                List<SelectChoice> choices = p.getSelectChoices();
                if (choices == null || choices.isEmpty()) return null;
                return new SelectOneData(new Selection(choices.get(0)));
            }
            case Constants.DATATYPE_MULTIPLE_ITEMS: {
                List<SelectChoice> choices = p.getSelectChoices();
                if (choices == null || choices.isEmpty()) return null;
                List<Selection> picked = new ArrayList<>();
                picked.add(new Selection(choices.get(0)));
                return new SelectMultiData(picked);
            }
            case Constants.DATATYPE_TEXT: return new StringData("answer " + n);
            default: return null;
        }
    }

    static void fill(String formPath, String out) throws Exception {
        FormDef form = XFormUtils.getFormFromInputStream(new FileInputStream(formPath));
        form.initialize(true, new InstanceInitializationFactory());
        FormEntryModel model = new FormEntryModel(form);
        FormEntryController fec = new FormEntryController(model);
        fec.jumpToIndex(FormIndex.createBeginningOfFormIndex());
        int n = 0;
        int repeats = 0;
        int event;
        while ((event = fec.stepToNextEvent()) != FormEntryController.EVENT_END_OF_FORM) {
            if (event == FormEntryController.EVENT_PROMPT_NEW_REPEAT) {
                if (repeats < 2) {
                    fec.newRepeat();
                    repeats++;
                }
                continue;
            }
            if (event != FormEntryController.EVENT_QUESTION) continue;
            FormEntryPrompt p = model.getQuestionPrompt();
            if (p.isReadOnly()) continue;
            n++;
            IAnswerData data;
            try {
                data = answer(p, n, out);
            } catch (RuntimeException e) {
                data = null;
            }
            if (data == null) continue;
            int result = fec.answerQuestion(p.getIndex(), data, true);
            if (result != FormEntryController.ANSWER_OK) {
                fec.answerQuestion(p.getIndex(), null, true);
            }
        }
        form.postProcessInstance();
        byte[] bytes = new XFormSerializingVisitor().serializeInstance(form.getInstance());
        try (FileOutputStream os = new FileOutputStream(out)) {
            os.write(bytes);
        }
        System.out.println("DONE " + out);
    }
}
